"""``lorareg agent`` in filesystem mode (no engine) as real subprocesses against real uvicorn +
PostgreSQL: promotion, canary and rollback with the drain, a kill -9 mid-download, a base
directory with one tensor changed (and fixed), another namespace's token, 20 agents converging.

One server for the module with a tiny real Llama registered as a base (its fingerprint is
what every agent hashes); every test has its own namespace and pool. Waits are bounded by
deadlines on observed state, never by timing thresholds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from registry.client import Client
from registry.statuses import BaseVerdict, DriftKind
from registry.wire import PoolStatusOut, ReplicaOut
from tests.cli.helpers import LORAREG, changed_copy, uvicorn_server
from tests.conftest import PgDatabases
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer, start_uvicorn

pytestmark = pytest.mark.e2e

BASE = "tiny/llama@agent"
MODEL_ID = "/models/tiny-llama"
DRAIN = 2
INTERVAL = "0.5s"
DEADLINE = 90.0


@dataclass
class Shared:
    server_env: dict[str, str]
    url: str
    admin: str
    base_dir: Path
    adapter_dir: Path


@pytest.fixture(scope="module")
def shared(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory,
           tiny_models: TinyModels) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("agent")
    base_dir = tiny_models.base("llama")
    adapter_dir = tiny_models.adapter(base_dir, r=4, target_modules=["q_proj", "v_proj"])
    with uvicorn_server(tmp, pg_databases.fresh(), f"file://{tmp / 'blobs'}") as server:
        assert server.admin_token is not None
        with Client(server.url, server.admin_token) as client:
            client.register_base(base_dir, "tiny/llama", "agent", no_cache=True)
        yield Shared(server.env, server.url, server.admin_token, base_dir, adapter_dir)


@dataclass
class Fleet:
    """One test's namespace: a pool bound to ``<ns>/bot:prod``, its agents."""

    shared: Shared
    client: Client
    ns: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def pool(self) -> str:
        return f"{self.ns}/cpu"

    def push(self, seed: int, extra_bytes: int = 0) -> int:
        folder = self.tmp / f"push-{seed}"
        shutil.copytree(self.shared.adapter_dir, folder)
        (folder / "notes.txt").write_text(f"version seed {seed}\n")
        if extra_bytes:
            (folder / "blob.bin").write_bytes(os.urandom(extra_bytes))
        return int(self.client.push(folder, f"{self.ns}/bot", BASE).version)

    def served(self, number: int) -> str:
        return self.client.served_name(f"{self.ns}/bot@{number}")

    def agent(self, name: str, *, model_dir: Path | None = None, token: str | None = None,
              cache: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        cache = cache or self.tmp / f"cache-{name}"
        env = {**self.shared.server_env, "LORAREG_TOKEN": token or self.shared.admin,
               "LORAREG_FINGERPRINT_CACHE": str(self.tmp / f"fp-{name}.sqlite")}
        log = (self.tmp / f"agent-{name}.log").open("ab")
        proc = subprocess.Popen(
            [LORAREG, "agent", "--pool", self.pool, "--model-dir",
             str(model_dir or self.shared.base_dir), "--cache-dir", str(cache),
             "--replica-id", name, "--interval", INTERVAL], env=env, stdout=log, stderr=log)
        self.procs.append(proc)
        self.logs.append(log)
        return proc, cache

    def status(self) -> PoolStatusOut:
        return self.client.pool_status(self.pool)

    def replica(self, name: str) -> ReplicaOut | None:
        return next((r for r in self.status().replicas if r.replica_id == name), None)

    def log_of(self, name: str) -> str:
        return (self.tmp / f"agent-{name}.log").read_text(errors="replace")


@pytest.fixture
def fleet(shared: Shared, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    ns = "a" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]
    with Client(shared.url, shared.admin) as client:
        client.create_pool(f"{ns}/cpu", base=BASE, model_id=MODEL_ID, dtype="float32",
                           max_loras=4, drain_seconds=DRAIN)
        fleet = Fleet(shared, client, ns, tmp_path)
        try:
            yield fleet
        finally:
            for proc in fleet.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in fleet.logs:
                log.close()


def eventually(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``check`` until it answers something truthy; fail naming ``what`` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"not reached within {deadline:g}s: {what}")
        time.sleep(0.1)


def start(fleet: Fleet, *numbers: int) -> None:
    fleet.client.promote(f"{fleet.ns}/bot@{numbers[0]}", "prod", now=True)
    fleet.client.bind_pool(fleet.pool, f"{fleet.ns}/bot:prod")


def served_here(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if not p.name.startswith(".")} if cache.is_dir() \
        else set()


def loaded(fleet: Fleet, replica: str) -> set[str]:
    r = fleet.replica(replica)
    return set(r.loaded) if r is not None and r.live else set()


def same_bytes(fleet: Fleet, cache: Path, number: int) -> bool:
    """The folder's files are the version's (the config rewritten for the pool aside)."""
    version = fleet.client.version(f"{fleet.ns}/bot@{number}")
    folder = cache / fleet.served(number)
    return all(hashlib.sha256((folder / f.path).read_bytes()).hexdigest() == f.digest
               for f in version.files if f.path != "adapter_config.json")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


# ------------------------------------------------------------------------------ the tests


def test_promote_canary_and_rollback_reach_the_folder_and_the_heartbeat(fleet: Fleet) -> None:
    v1, v2 = fleet.push(1), fleet.push(2)
    start(fleet, v1)
    _, cache = fleet.agent("r1")
    n1, n2 = fleet.served(v1), fleet.served(v2)
    eventually(lambda: loaded(fleet, "r1") == {n1}, "v1 loaded on r1")
    assert served_here(cache) == {n1} and same_bytes(fleet, cache, v1)
    replica = fleet.replica("r1")
    assert replica is not None and replica.verdict == BaseVerdict.COMPATIBLE
    assert replica.cache_bytes > 0 and replica.drift == []

    fleet.client.promote(f"{fleet.ns}/bot@{v2}", "prod", steps=[50, 100],
                         interval_seconds=3600)
    eventually(lambda: loaded(fleet, "r1") == {n1, n2}, "canary v2 loaded beside v1")
    assert served_here(cache) == {n1, n2} and same_bytes(fleet, cache, v2)

    fleet.client.rollback(f"{fleet.ns}/bot:prod", to=v1)
    eventually(lambda: served_here(cache) == {n1} and loaded(fleet, "r1") == {n1},
               "v2 drained away after the rollback")
    where = fleet.client.where(f"{fleet.ns}/bot@{v1}")
    assert [r.replica_id for r in where.replicas if r.bytes_ok] == ["r1"]
    assert "drained" in fleet.log_of("r1") or "removed" in fleet.log_of("r1")


def test_sigterm_stops_cleanly_with_a_last_heartbeat(fleet: Fleet) -> None:
    v1 = fleet.push(1)
    start(fleet, v1)
    proc, _ = fleet.agent("r1")
    eventually(lambda: loaded(fleet, "r1") == {fleet.served(v1)}, "v1 loaded")
    before = fleet.replica("r1")
    assert stop(proc) == 0
    after = fleet.replica("r1")
    assert before is not None and after is not None
    assert after.last_heartbeat_at >= before.last_heartbeat_at
    assert "last heartbeat" in fleet.log_of("r1")


def test_kill_9_mid_download_then_restart_converges_without_a_partial_folder(fleet: Fleet
                                                                             ) -> None:
    v1 = fleet.push(1, extra_bytes=96 * 1024 * 1024)
    start(fleet, v1)
    proc, cache = fleet.agent("r1")
    incoming = cache / ".lorareg" / ".incoming"

    def started() -> bool:
        return (incoming.is_dir() and any(incoming.iterdir())) or bool(served_here(cache))

    eventually(started, "the download started")
    proc.send_signal(signal.SIGSTOP)  # frozen, so what we look at is what the kill leaves
    name = fleet.served(v1)
    assert served_here(cache) == set(), "the download finished before the kill: too fast"
    proc.kill()
    proc.wait()
    # Where the resolver looks there is the whole verified folder or nothing.
    assert served_here(cache) <= {name}
    if name in served_here(cache):
        assert same_bytes(fleet, cache, v1)

    fleet.agent("r1", cache=cache)
    eventually(lambda: loaded(fleet, "r1") == {name}, "v1 loaded after the restart")
    assert served_here(cache) == {name} and same_bytes(fleet, cache, v1)
    assert not any(incoming.iterdir())


def test_a_base_with_one_tensor_changed_loads_nothing_until_fixed(fleet: Fleet) -> None:
    v1 = fleet.push(1)
    start(fleet, v1)
    bad = fleet.tmp / "bad-base"
    changed_copy(fleet.shared.base_dir, bad)
    _, cache = fleet.agent("r1", model_dir=bad)

    def incompatible() -> ReplicaOut | None:
        r = fleet.replica("r1")
        return r if r is not None and r.verdict == BaseVerdict.INCOMPATIBLE else None

    replica = eventually(incompatible, "r1 reported incompatible")
    pool_fp = fleet.client.desired(fleet.pool).base_fingerprint
    assert replica.pool_fingerprint == pool_fp
    assert replica.base_fingerprint is not None and replica.base_fingerprint != pool_fp
    assert replica.loaded == [] and served_here(cache) == set()

    for shard in sorted(fleet.shared.base_dir.glob("*.safetensors")):
        shutil.copyfile(shard, bad / shard.name)  # the directory fixed in place
    name = fleet.served(v1)
    eventually(lambda: loaded(fleet, "r1") == {name}, "v1 loaded once the base is fixed")
    fixed = fleet.replica("r1")
    assert fixed is not None and fixed.verdict == BaseVerdict.COMPATIBLE
    assert fixed.base_fingerprint == pool_fp and same_bytes(fleet, cache, v1)


def test_another_namespaces_token_gets_nothing_and_reports_nothing(fleet: Fleet) -> None:
    v1 = fleet.push(1)
    start(fleet, v1)
    other = fleet.client.create_token("other-reader", "reader", namespace="someone-else")
    assert other.token is not None
    proc, cache = fleet.agent("intruder", token=other.token)
    eventually(lambda: "error" in fleet.log_of("intruder"), "the agent logged the refusal")
    assert proc.poll() is None  # it keeps trying, it does not crash
    assert served_here(cache) == set()
    assert fleet.status().replicas == []


def test_twenty_agents_converge_and_never_report_bytes_other_than_the_digest(fleet: Fleet
                                                                              ) -> None:
    v1, v2 = fleet.push(1), fleet.push(2)
    start(fleet, v1)
    caches = [fleet.agent(f"r{i:02d}")[1] for i in range(20)]
    drift: list[str] = []

    def all_loaded(name: str) -> bool:
        status = fleet.status()
        drift.extend(f"{r.replica_id}: {d.detail}" for r in status.replicas for d in r.drift
                     if d.kind == DriftKind.BYTES_DIFFER)
        live = [r for r in status.replicas if r.live]
        return len(live) == 20 and all(name in r.loaded for r in live)

    eventually(lambda: all_loaded(fleet.served(v1)), "v1 loaded on 20 agents", deadline=180)
    fleet.client.promote(f"{fleet.ns}/bot@{v2}", "prod", now=True)
    eventually(lambda: all_loaded(fleet.served(v2)), "v2 loaded on 20 agents", deadline=120)
    assert drift == []
    where = fleet.client.where(f"{fleet.ns}/bot@{v2}")
    assert len(where.replicas) == 20 and all(r.bytes_ok for r in where.replicas)
    assert all(same_bytes(fleet, cache, v2) for cache in caches)


def test_registry_downtime_keeps_what_it_has_and_resumes(
        pg_databases: PgDatabases, tmp_path: Path, shared: Shared) -> None:
    """A registry of its own, stopped under the agent and started again on the same port."""
    root = tmp_path / "own"
    root.mkdir()
    with uvicorn_server(root, pg_databases.fresh(), f"file://{root / 'blobs'}") as server:
        assert server.admin_token is not None
        with Client(server.url, server.admin_token) as client:
            client.register_base(shared.base_dir, "tiny/llama", "agent", no_cache=True)
            client.create_pool("down/cpu", base=BASE, model_id=MODEL_ID, dtype="float32",
                               drain_seconds=DRAIN)
            own = Shared(server.env, server.url, server.admin_token, shared.base_dir,
                         shared.adapter_dir)
            fleet = Fleet(own, client, "down", tmp_path)
            try:
                _survive_downtime(fleet, server)
            finally:
                for proc in fleet.procs:
                    proc.kill()
                    proc.wait()
                for log in fleet.logs:
                    log.close()


def _survive_downtime(fleet: Fleet, server: LiveServer) -> None:
    v1 = fleet.push(1)
    start(fleet, v1)
    proc, cache = fleet.agent("r1")
    name = fleet.served(v1)
    eventually(lambda: loaded(fleet, "r1") == {name}, "v1 loaded")
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    eventually(lambda: fleet.log_of("r1").count("heartbeat failed") >= 2,
               "the agent noticed the registry is down")
    assert proc.poll() is None and served_here(cache) == {name}  # it keeps what it has
    before = fleet.log_of("r1").count("heartbeat failed")
    restarted = start_uvicorn(server.env, fleet.tmp / "restarted.log", port=port)
    try:
        seen = fleet.replica("r1")
        assert seen is not None
        eventually(lambda: (r := fleet.replica("r1")) is not None
                   and r.last_heartbeat_at > seen.last_heartbeat_at and r.live
                   and set(r.loaded) == {name}, "heartbeats resumed with v1")
        assert fleet.log_of("r1").count("heartbeat failed") >= before
        assert served_here(cache) == {name} and same_bytes(fleet, cache, v1)
    finally:
        restarted.stop()
