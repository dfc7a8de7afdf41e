"""``lorareg agent --engine-url`` against the session's real vLLM (runtime LoRA updating on):
a lorareg server (uvicorn on PostgreSQL), the agent as a real process, the CLI for the rest.

promote v1 -> the agent loads it -> a completion with resolve's served name gives PEFT's
greedy tokens; canary v2 -> both loaded (v2's tokens are PEFT's too); rollback -> v2 unloaded
once the drain has passed and its folder gone; ``pool status`` and ``where`` show the replica.

Not here: restarting vLLM under the agent (the session's server is shared; a private server
costs ~1 min and ~2.7 GB). The agent's answer to an engine restart is the same code path as
its own restart (it re-reads ``/v1/models`` every turn and loads what is missing).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.client import Client
from tests.cli.helpers import LORAREG, uvicorn_server
from tests.conftest import PgDatabases
from tests.fixtures.server import LiveServer
from tests.fixtures.vllm import TinyLlama, VllmServer
from tests.serving.test_vllm_handoff import Cli, Journey, loaded

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]

BASE = "tiny/vllm-llama@r1"  # Journey pushes against this base
DEADLINE = 120.0


@pytest.fixture(scope="module")
def registry(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("agent-vllm")
    with uvicorn_server(root, pg_databases.fresh(), f"file://{root / 'blobs'}") as server:
        yield server


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Every command and its output, written to ``transcript.txt`` (for the README)."""
    lines: list[str] = []
    yield lines
    (tmp_path_factory.mktemp("agent-transcript") / "transcript.txt").write_text(
        "\n".join(lines))


@pytest.fixture(scope="module")
def cli(registry: LiveServer, transcript: list[str], vllm_tiny_llama: TinyLlama,
        vllm_server: VllmServer) -> Cli:
    runner = Cli(registry, transcript)
    assert registry.admin_token is not None
    with Client(registry.url, registry.admin_token) as client:
        name, revision = BASE.split("@")
        client.register_base(vllm_tiny_llama.path, name, revision, no_cache=True)
    return runner


def eventually(check: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + DEADLINE
    while not (value := check()):
        if time.monotonic() > end:
            pytest.fail(f"not reached within {DEADLINE:g}s: {what}")
        time.sleep(0.2)
    return value


def replica_loaded(cli: Cli, pool: str) -> set[str]:
    status = cli.json("pool", "status", pool)
    return {n for r in status["replicas"] if r["live"] for n in r["loaded"]}


def test_the_agent_loads_the_pool_into_vllm_and_drains_a_rollback(
        cli: Cli, registry: LiveServer, vllm_server: VllmServer, vllm_tiny_llama: TinyLlama,
        tmp_path: Path) -> None:
    prompt = vllm_tiny_llama.encode("def hello(world):\n    return")
    j = Journey(cli, vllm_server, vllm_tiny_llama, prompt, tmp_path, "agentns")
    one = j.promote_v1()
    cache = tmp_path / "cache"
    args = ["agent", "--pool", j.pool, "--engine-url", vllm_server.url, "--model-dir",
            str(vllm_tiny_llama.path), "--cache-dir", str(cache), "--replica-id", "cpu-1",
            "--interval", "0.5s"]
    cli.transcript.append(f"$ lorareg {' '.join(args)} &")
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen([LORAREG, *args], env=cli.env, stdout=log, stderr=log)
    try:
        eventually(lambda: one in loaded(vllm_server), "v1 loaded by the agent")
        assert loaded(vllm_server)[one].rstrip("/") == str((cache / one).resolve())
        eventually(lambda: replica_loaded(cli, j.pool) == {one}, "v1 in the heartbeat")
        assert j.tokens(one) == j.expected[j.v1]

        proc.kill()  # kill -9, then a new agent on the same cache and engine
        proc.wait()
        mark = (tmp_path / "agent.log").stat().st_size
        proc = subprocess.Popen([LORAREG, *args], env=cli.env, stdout=log, stderr=log)
        eventually(lambda: "agent cpu-1" in _since(tmp_path / "agent.log", mark),
                   "the second agent started")
        status = cli.json("pool", "status", j.pool)
        first_beat = status["replicas"][0]["last_heartbeat_at"]
        eventually(lambda: cli.json("pool", "status", j.pool)["replicas"][0]
                   ["last_heartbeat_at"] != first_beat, "the second agent's heartbeat")
        # It found v1 loaded from its folder: no second load, no second download.
        again = _since(tmp_path / "agent.log", mark)
        assert f"loaded {one}" not in again and f"exported {one}" not in again, again
        assert [m["id"] for m in vllm_server.models()].count(one) == 1

        two = j.canary_v2()
        eventually(lambda: {one, two} <= loaded(vllm_server).keys(), "canary v2 loaded")
        eventually(lambda: replica_loaded(cli, j.pool) == {one, two}, "both in the heartbeat")
        assert j.tokens(two) == j.expected[j.v2]
        assert j.tokens(one) == j.expected[j.v1]

        j.rollback()
        eventually(lambda: two not in loaded(vllm_server) and not (cache / two).exists(),
                   "v2 unloaded and removed after the drain")
        assert one in loaded(vllm_server) and j.tokens(one) == j.expected[j.v1]
        eventually(lambda: replica_loaded(cli, j.pool) == {one}, "v1 alone in the heartbeat")
        cli.ok("pool", "status", j.pool)
        where = cli.json("where", f"{j.adapter}@{j.v1}", record=True)
        assert [(r["replica_id"], r["bytes_ok"]) for r in where["replicas"]] == [("cpu-1", True)]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
        cli.transcript.append((tmp_path / "agent.log").read_text(errors="replace"))
    # The agent leaves the engine as it was asked to serve it (no unload at exit).
    assert one in loaded(vllm_server)
    unloaded = vllm_server.unload(one)  # the shared server goes back to how it was
    assert unloaded.status_code == 200, json.dumps(unloaded.text)


def _since(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")
