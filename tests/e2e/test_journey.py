"""The whole journey on the production topology with faults: PostgreSQL, an S3 endpoint, two
API processes, two workers and the CLI as subprocesses; one API process is killed mid-journey
and one worker is SIGKILLed mid-merge, and the journey still completes with nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import Done, run
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer, base_env, bootstrap_admin, start_uvicorn
from tests.fixtures.workers import spawn_worker, stop_workers, wait_until

pytestmark = pytest.mark.e2e
GATES = ["--gate", "eval.accuracy >= stable - 0.05", "--gate", "live.error_rate <= 0.02",
         "--gate", "live.latency_p95_ms <= stable * 1.1"]


@pytest.fixture
def topology(pg_databases: object, request: pytest.FixtureRequest, s3_bucket: str,
             s3_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, object]]:
    url: str = request.getfixturevalue("pg_databases").fresh()
    token = bootstrap_admin(url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=url,
                   LORAREG_BLOB_URL=f"s3://{s3_bucket}/lorareg", LORAREG_WORKER_LEASE_SECONDS="3",
                   **s3_env)
    apis = [start_uvicorn(env, tmp_path / f"api-{i}.log") for i in range(2)]
    workers = [spawn_worker(env, tmp_path / f"worker-{i}", poll=0.2) for i in range(2)]
    cli = [{**env, "LORAREG_URL": api.url, "LORAREG_TOKEN": token, "HOME": str(tmp_path),
            "LORAREG_CONFIG": str(tmp_path / "cli.json"),
            "LORAREG_FINGERPRINT_CACHE": str(tmp_path / "fp.sqlite")} for api in apis]
    try:
        yield {"apis": apis, "workers": workers, "cli": cli}
    finally:
        stop_workers(*workers)
        for api in apis:
            api.stop()


def ok(done: Done) -> Done:
    assert done.code == 0, (done.args, done.stdout, done.stderr)
    return done


def canary(env: dict[str, str], stable: int, candidate: int, errors: int) -> str:
    rollout = ok(run(env, "--json", "promote", f"demo/bot@{candidate}", "--channel", "prod",
                     "--steps", "50,100", "--interval", "1s", *GATES)).json()["rollout"]
    for _ in range(120):
        status = ok(run(env, "--json", "rollout", "status", str(rollout["id"]))).json()["status"]
        if status in ("promoted", "aborted"):
            return str(status)
        for version, errs in ((stable, 1), (candidate, errors)):
            ok(run(env, "live", "report", f"demo/bot@{version}", "--requests", "1000",
                   "--errors", str(errs), "--value", "latency_p95_ms=100"))
        time.sleep(0.3)
    raise AssertionError("rollout did not finish")


def test_journey_survives_an_api_crash_and_a_worker_kill(
    topology: dict[str, object], tiny_models: TinyModels
) -> None:
    apis: list[LiveServer] = topology["apis"]  # type: ignore[assignment]
    workers: list[subprocess.Popen[bytes]] = topology["workers"]  # type: ignore[assignment]
    env_a, env_b = topology["cli"]  # type: ignore[misc]
    # Big enough that the merge job runs for a moment.
    base = tiny_models.base("llama", hidden_size=512, intermediate_size=1376,
                            num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                            vocab_size=8000)
    adapters = [tiny_models.adapter(base, r=8, lora_alpha=16 + i,
                                    target_modules=["q_proj", "v_proj", "up_proj"])
                for i in range(3)]
    ok(run(env_a, "base", "register", str(base), "--name", "tiny/llama", "--revision", "r1",
           "--upload"))
    pushed = ok(run(env_a, "--json", "push", str(adapters[0]), "--adapter", "demo/bot",
                    "--base", "tiny/llama@r1", "--metric", "accuracy=0.91",
                    "--git-commit", "0a1b2c3", "--ci-run-url", "https://ci/runs/1")).json()
    assert pushed["version"] == 1 and pushed["provenance"]["git_commit"] == "0a1b2c3"

    apis[0].proc.kill()  # API process A dies mid-journey; B carries on
    apis[0].proc.wait()
    job = ok(run(env_b, "--json", "merge", "demo/bot@1")).json()["job"]
    wait_until(lambda: ok(run(env_b, "--json", "jobs", "show", str(job["id"]))).json()["status"]
               == "running", timeout=60, interval=0.05)
    holder = ok(run(env_b, "--json", "jobs", "show", str(job["id"]))).json()["worker_id"]
    pid = int(holder.split(":")[1])
    victim = next(w for w in workers if w.pid == pid)
    os.kill(pid, signal.SIGKILL)  # mid-merge; the other worker takes over after the lease
    victim.wait()
    done = ok(run(env_b, "--json", "wait", f"job:{job['id']}", "--timeout", "3m")).json()
    assert done["status"] == "succeeded" and done["attempts"] == 2

    merged = Path(env_b["HOME"]) / "merged"
    ok(run(env_b, "pull", "demo/bot@1", "--merged", "-o", str(merged)))
    assert sorted(p.name for p in merged.glob("*.safetensors"))
    ok(run(env_b, "promote", "demo/bot@1", "--channel", "staging", "--now"))
    ok(run(env_b, "promote", "demo/bot@1", "--channel", "prod", "--now"))
    ok(run(env_b, "push", str(adapters[1]), "--adapter", "demo/bot", "--base", "tiny/llama@r1",
           "--metric", "accuracy=0.93"))
    assert canary(env_b, 1, 2, errors=1) == "promoted"
    ok(run(env_b, "push", str(adapters[2]), "--adapter", "demo/bot", "--base", "tiny/llama@r1",
           "--metric", "accuracy=0.92"))
    assert canary(env_b, 2, 3, errors=200) == "aborted"

    prod = ok(run(env_b, "--json", "channel", "show", "demo/bot:prod")).json()
    assert prod["stable"] == 2 and prod["canary"] is None
    history = ok(run(env_b, "--json", "history", "demo/bot:prod")).json()
    actions = [e["action"] for e in reversed(history)]
    assert actions[0] == "promoted" and "rollout.promoted" in actions
    assert actions[-1] == "rollout.aborted" and actions.count("rollout.started") == 2
    versions = ok(run(env_b, "--json", "ls", "demo/bot")).json()
    assert sorted(v["version"] for v in versions) == [1, 2, 3]
    audit = ok(run(env_b, "--json", "audit", "--action", "merge.succeeded")).json()
    assert len(audit) == 1
