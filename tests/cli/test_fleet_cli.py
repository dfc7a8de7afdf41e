"""``lorareg pool status``, ``lorareg where`` and ``lorareg promote --wait-loaded`` (and the
client's ``wait_loaded``) against a real uvicorn on PostgreSQL; replicas are simulated by
heartbeats the test sends through the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry.client import Client, PoolStatusOut, ReportedAdapter, Residency
from registry.errors import RegistryError
from registry.statuses import AdapterState
from tests.e2e.test_fleet_e2e import Seeded, seed
from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e
LOADED, FAILED = AdapterState.LOADED, AdapterState.FAILED
ENGINE_ERROR = ("ValueError: LoRA rank 64 is greater than max_lora_rank 16 "
                "(vllm/lora/worker_manager.py)")


@pytest.fixture
def fleet(live_server: LiveServer, fresh_db_url: str, tmp_path: Path
          ) -> Iterator[tuple[Client, Seeded]]:
    seeded = seed(fresh_db_url, tmp_path / "blobs")
    with Client(live_server.url, live_server.admin_token) as client:
        yield client, seeded


def residency(seeded: Seeded, *held: ReportedAdapter, fingerprint: str | None = None
              ) -> Residency:
    return Residency(engine="vllm", agent_version="0.1",
                     base_fingerprint=fingerprint or seeded.fingerprint, adapters=held,
                     engine_url="http://10.0.0.5:8000", interval_seconds=10)


def holding(seeded: Seeded, index: int, state: AdapterState = LOADED,
            error: str | None = None) -> ReportedAdapter:
    digest = seeded.digests[index] if state == LOADED else None
    return ReportedAdapter(seeded.served[index], state, digest, error)


def cli(server: LiveServer, tmp: Path, *args: str) -> Result:
    env = {"LORAREG_URL": server.url, "LORAREG_TOKEN": server.admin_token or "",
           "LORAREG_CONFIG": str(tmp / "config.json")}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_wait_loaded_returns_once_every_live_replica_has_loaded(
        fleet: tuple[Client, Seeded]) -> None:
    client, seeded = fleet
    for replica in ("gpu-0", "gpu-1"):
        client.report_residency("acme/gpu-a", replica, residency(seeded, holding(seeded, 0)))
    client.promote("acme/bot@2", "prod", now=True)
    polls: list[list[PoolStatusOut]] = []

    def agents(statuses: list[PoolStatusOut]) -> None:
        """The replicas converge while the promoter waits: gpu-0 loads v2 at the first poll,
        gpu-1 is still pulling it then and loads it at the third."""
        polls.append(statuses)
        gpu1 = holding(seeded, 1, AdapterState.LOADING) if len(polls) < 3 else holding(seeded, 1)
        client.report_residency("acme/gpu-a", "gpu-0", residency(
            seeded, holding(seeded, 0), holding(seeded, 1)))
        client.report_residency("acme/gpu-a", "gpu-1", residency(
            seeded, holding(seeded, 0), gpu1))

    final = client.wait_loaded("acme/bot:prod", seeded.served[1], timeout=120,
                               progress=agents)
    assert len(polls) >= 4  # it waited through "loading" until both had loaded
    (pool,) = final
    assert pool.pool == "acme/gpu-a"
    assert all(seeded.served[1] in r.loaded for r in pool.replicas)
    assert [r.replica_id for r in pool.replicas if r.live] == ["gpu-0", "gpu-1"]
    # v1 is draining: still loaded, not drift.
    assert pool.drift_versions == [] and [v.draining for v in pool.versions] == [False, True]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_promote_wait_loaded_times_out_naming_replicas_and_errors(
        fleet: tuple[Client, Seeded], live_server: LiveServer, tmp_path: Path) -> None:
    client, seeded = fleet
    client.report_residency("acme/gpu-a", "gpu-0", residency(
        seeded, holding(seeded, 0), holding(seeded, 1)))
    client.report_residency("acme/gpu-a", "gpu-1", residency(
        seeded, holding(seeded, 0), holding(seeded, 1, FAILED, ENGINE_ERROR)))
    client.report_residency("acme/gpu-a", "gpu-2", residency(
        seeded, fingerprint="f" * 64))
    result = cli(live_server, tmp_path, "promote", "acme/bot@2", "-c", "prod", "--now",
                 "--wait-loaded", "--timeout", "1s")
    assert result.exit_code == 6, (result.stdout, result.stderr)
    assert "promoted acme/bot@2 to acme/bot:prod" in result.stdout  # the promotion stands
    error = result.stderr
    assert f"{seeded.served[1]} is not loaded on every live replica" in error
    assert "gpu-1: failed" in error and ENGINE_ERROR in error
    assert "gpu-2: incompatible base (replica " + "f" * 64 in error
    assert seeded.fingerprint in error
    assert "gpu-0" not in error
    assert client.channel("acme/bot:prod").stable == 2

    with pytest.raises(RegistryError) as raised:
        client.wait_loaded("acme/gpu-a", seeded.served[1], timeout=0.5)
    assert raised.value.exit_code == 6
    assert [p["pool"] for p in raised.value.extra["pools"]] == ["acme/gpu-a"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_wait_loaded_needs_a_bound_pool_and_a_live_replica(
        fleet: tuple[Client, Seeded], live_server: LiveServer, tmp_path: Path) -> None:
    client, seeded = fleet
    result = cli(live_server, tmp_path, "promote", "acme/bot@2", "-c", "staging", "--now",
                 "--wait-loaded", "--timeout", "1s")
    assert result.exit_code == 4 and "no pool serves acme/bot:staging" in result.stderr
    with pytest.raises(RegistryError, match="no live replica"):
        client.wait_loaded("acme/gpu-a", seeded.served[0], timeout=0.3)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_pool_status_and_where_commands(fleet: tuple[Client, Seeded], live_server: LiveServer,
                                        tmp_path: Path) -> None:
    client, seeded = fleet
    client.report_residency("acme/gpu-a", "gpu-0", residency(seeded, holding(seeded, 0)))
    client.report_residency("acme/gpu-a", "gpu-1", residency(
        seeded, holding(seeded, 0), holding(seeded, 2), fingerprint="f" * 64))
    human = cli(live_server, tmp_path, "pool", "status", "acme/gpu-a")
    assert human.exit_code == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].split()[:3] == ["REPLICA", "LIVE", "VERDICT"]
    assert lines[1].split()[:3] == ["gpu-0", "yes", "compatible"] and "1/1" in lines[1]
    assert lines[2].split()[:3] == ["gpu-1", "yes", "incompatible"]
    assert f"base {'f' * 64} (the pool's is {seeded.fingerprint})" in human.stdout
    assert f"incompatible_base {seeded.served[2]}" in human.stdout
    assert "2 live of 2 replicas (1 compatible, 1 incompatible)" in human.stdout
    as_json: dict[str, Any] = json.loads(cli(live_server, tmp_path, "--json", "pool",
                                             "status", "acme/gpu-a").stdout)
    assert as_json["verdicts"] == {"compatible": 1, "incompatible": 1, "unknown": 0}
    assert sorted(as_json["drift_versions"]) == sorted(seeded.served[i] for i in (0, 2))

    where = cli(live_server, tmp_path, "where", "acme/bot:prod")
    assert where.exit_code == 0, where.stderr
    assert [line.split()[:4] for line in where.stdout.splitlines()[1:3]] == [
        ["acme/gpu-a", "gpu-0", "loaded", "ok"], ["acme/gpu-a", "gpu-1", "loaded", "ok"]]
    assert "desired in acme/gpu-a" in where.stdout
    found = json.loads(cli(live_server, tmp_path, "--json", "where", "acme/bot@3").stdout)
    assert [(r["replica_id"], r["verdict"]) for r in found["replicas"]] == [
        ("gpu-1", "incompatible")]
    assert found["desired_in"] == [] and found["served_name"] == seeded.served[2]
    missing = cli(live_server, tmp_path, "where", "acme/bot@9")
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_agents_calls_poll_desired_and_long_errors(fleet: tuple[Client, Seeded]) -> None:
    client, seeded = fleet
    first = client.poll_desired("acme/gpu-a")
    assert first is not None and [m.served_name for m in first.members] == [seeded.served[0]]
    assert first.base_fingerprint == seeded.fingerprint and first.model_id == "/models/llama"
    assert first.members[0].files and all(f.digest and f.size for f in first.members[0].files)
    assert client.poll_desired("acme/gpu-a", first.revision, wait=0.2) is None  # unchanged
    client.promote("acme/bot@2", "prod", now=True)
    changed = client.poll_desired("acme/gpu-a", first.revision, wait=30)
    assert changed is not None and changed.revision != first.revision
    assert [m.served_name for m in changed.draining] == [seeded.served[0]]

    long_error = "Traceback (most recent call last):\n" + "x" * 20_000 + "\nOSError: disk full"
    answer = client.report_residency("acme/gpu-a", "gpu-0", residency(
        seeded, holding(seeded, 1, FAILED, long_error)))
    stored = answer.adapters[0].error
    assert stored is not None and len(stored) <= 4096
    assert stored.startswith("Traceback") and stored.endswith("OSError: disk full")
    assert answer.desired_revision == changed.revision
    client.forget_replica("acme/gpu-a", "gpu-0")
    assert client.pool_status("acme/gpu-a").replicas == []
