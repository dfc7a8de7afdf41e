"""`lorareg gate` and `lorareg wait` as a pipeline runs them: real subprocesses against a real
server and worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import embedded_server, run
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with embedded_server(tmp_path_factory.mktemp("pipeline")) as srv:
        yield srv


@pytest.fixture(scope="module")
def published(server: LiveServer, tiny_models: TinyModels) -> dict[str, str]:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    env = server.env
    reg = run(env, "--json", "base", "register", str(base), "--name", "tiny/llama",
              "--revision", "r1", "--upload")
    assert reg.code == 0, reg.stderr
    first = run(env, "--json", "push", str(adapter), "--adapter", "acme/bot",
                "--base", "tiny/llama@r1", "--metric", "accuracy=0.90")
    assert first.code == 0, first.stderr
    assert run(env, "promote", "acme/bot@1", "--channel", "prod", "--now").code == 0
    (adapter.parent / "v2").mkdir(exist_ok=True)
    second_dir = adapter.parent / "v2"
    for f in adapter.iterdir():
        (second_dir / f.name).write_bytes(f.read_bytes())
    (second_dir / "README.md").write_text("v2\n")
    second = run(env, "--json", "push", str(second_dir), "--adapter", "acme/bot",
                 "--base", "tiny/llama@r1", "--metric", "accuracy=0.85",
                 "--idempotency-key", "run-7/push")
    assert second.code == 0, second.stderr
    return {"v2": str(json.loads(second.stdout)["version"])}


def test_gate_passes_and_fails_with_a_table(server: LiveServer, published: dict[str, str]
                                            ) -> None:
    ok = run(server.env, "gate", "acme/bot@1", "--require", "eval.accuracy >= 0.9")
    assert ok.code == 0 and "PASS" in ok.stdout
    ref = f"acme/bot@{published['v2']}"
    bad = run(server.env, "gate", ref, "--require", "eval.accuracy >= 0.8",
              "--require", "eval.accuracy >= stable(prod) - 0.01")
    assert bad.code == 7
    assert "FAIL" in bad.stdout and "PASS" in bad.stdout and "stable(prod)" in bad.stdout
    as_json = run(server.env, "--json", "gate", ref, "--require", "eval.f1 >= 0.5")
    assert as_json.code == 7
    doc = json.loads(as_json.stdout)
    assert doc["passed"] is False and doc["requirements"][0]["verdict"] == "inconclusive"
    usage = run(server.env, "gate", ref, "--require", "live.error_rate <= 0.1")
    assert usage.code == 4 and "live" in usage.stderr


def test_idempotency_key_returns_the_same_version(server: LiveServer, tiny_models: TinyModels,
                                                  published: dict[str, str]) -> None:
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    again = run(server.env, "--json", "push", str(adapter.parent / "v2"), "--adapter",
                "acme/bot", "--base", "tiny/llama@r1", "--idempotency-key", "run-7/push")
    assert again.code == 0 and str(json.loads(again.stdout)["version"]) == published["v2"]
    other = run(server.env, "push", str(adapter), "--adapter", "acme/bot",
                "--base", "tiny/llama@r1", "--idempotency-key", "run-7/push")
    assert other.code == 3 and "other content" in other.stderr


def test_wait_for_a_merge_job_and_bad_targets(server: LiveServer, published: dict[str, str],
                                              tmp_path: Path) -> None:
    merge = run(server.env, "--json", "merge", "acme/bot@1")
    assert merge.code == 0, merge.stderr
    doc = json.loads(merge.stdout)
    if doc.get("job"):
        waited = run(server.env, "--json", "wait", f"job:{doc['job']['id']}", "--timeout", "2m")
        assert waited.code == 0, waited.stderr
        assert json.loads(waited.stdout)["status"] == "succeeded"
    assert run(server.env, "wait", "nonsense").code == 1
    assert run(server.env, "wait", "job:999999").code == 2
    assert run(server.env, "wait", "rollout:999999").code == 2
