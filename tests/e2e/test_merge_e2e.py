"""Merging end to end with real processes: ``lorareg serve`` (SQLite, local blobs and its
in-process worker) driven by the ``lorareg`` CLI as subprocesses. A merged model pulled with
``--merged`` loads with transformers and holds exactly what ``merge_adapter`` computes; a base
folder on the worker whose weights differ from the registered fingerprint fails the job with
exit 4."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.fingerprint import fingerprint_dir
from tests.cli.helpers import changed_copy, embedded_server, run, run_all
from tests.fixtures.models import TinyModels, load_model, read_folder
from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e

REV = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Setup:
    server: LiveServer
    base: Path
    adapter: Path
    uploaded_base_id: int
    bad_tensor: str
    bad_fingerprint: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[Setup]:
    """One server; ``tiny/llama`` registered with --upload and ``tiny/llama-local`` without
    (the worker then finds only a changed copy under LORAREG_BASE_DIRS); an adapter pushed
    on each."""
    root = tmp_path_factory.mktemp("merge-e2e")
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj", "up_proj"])
    bad_tensor = changed_copy(base, root / "local-bases" / "tiny-llama")
    bad_fp = fingerprint_dir(root / "local-bases" / "tiny-llama").digest
    with embedded_server(root, LORAREG_BASE_DIRS=json.dumps([str(root / "local-bases")])
                         ) as server:
        env = server.env
        uploaded, local = run_all([
            (env, ["--json", "base", "register", str(base), "--name", "tiny/llama",
                   "--revision", REV, "--upload"]),
            (env, ["--json", "base", "register", str(base), "--name", "tiny/llama-local",
                   "--revision", REV]),
        ])
        assert uploaded.json()["files"] and not local.json()["files"]
        pushes = run_all([
            (env, ["--json", "push", str(adapter), "--adapter", "acme/bot",
                   "--base", f"tiny/llama@{REV}"]),
            (env, ["--json", "push", str(adapter), "--adapter", "acme/local-bot",
                   "--base", f"tiny/llama-local@{REV}"]),
        ])
        assert [p.json()["base"]["compat_status"] for p in pushes] == ["verified"] * 2
        yield Setup(server, base, adapter, int(uploaded.json()["id"]), bad_tensor, bad_fp)


def test_merge_wait_then_pull_merged_matches_merge_adapter_and_loads(
    setup: Setup, tmp_path: Path
) -> None:
    from merge_worker.merge import merge_adapter

    env = setup.server.env
    merged = run(env, "--json", "merge", "acme/bot@1", "--wait", "--timeout", "5m").json()
    assert merged["status"] == "succeeded" and merged["artifact_id"] is not None
    job_id = str(merged["job_id"])

    dest = tmp_path / "merged"
    pulled, listed, shown, again, cancel = run_all([
        (env, ["--json", "pull", "acme/bot@1", "--merged", "-o", str(dest)]),
        (env, ["--json", "jobs", "ls", "--kind", "merge", "--status", "succeeded"]),
        (env, ["jobs", "show", job_id]),
        (env, ["--json", "merge", "acme/bot@1"]),
        (env, ["jobs", "cancel", job_id]),
    ])
    assert pulled.json()["merged_fingerprint"] == merged["merged_fingerprint"]
    assert [j["target"] for j in listed.json() if str(j["id"]) == job_id] == ["acme/bot@1"]
    assert shown.code == 0 and "succeeded" in shown.stdout and "acme/bot@1" in shown.stdout
    # Asking again returns the artifact at once: no new job.
    assert (again.json()["artifact_id"], again.json()["job"]) == (merged["artifact_id"], None)
    assert "already succeeded" in cancel.error_line(3)

    reference = tmp_path / "reference"
    merge_adapter(setup.base, setup.adapter, reference)
    want, have = read_folder(reference), read_folder(dest)
    assert want.keys() == have.keys()
    assert all(have[k].dtype == want[k].dtype and have[k].equal(want[k]) for k in want)
    assert fingerprint_dir(dest).digest == merged["merged_fingerprint"]
    assert {p.name for p in dest.iterdir()} == {p.name for p in reference.iterdir()}
    model = load_model(dest)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_merge_onto_different_local_weights_fails_with_exit_4(setup: Setup) -> None:
    env = setup.server.env
    failed = run(env, "merge", "acme/local-bot@1", "--wait", "--timeout", "5m")
    line = failed.error_line(4)
    assert setup.bad_fingerprint in line and f"'{setup.bad_tensor}'" in line
    job_id = line.split("job ", 1)[1].split(" ", 1)[0]
    watched, shown = run_all([(env, ["jobs", "watch", job_id]),
                              (env, ["--json", "jobs", "show", job_id])])
    assert watched.error_line(4) == line
    job = shown.json()
    assert (job["status"], job["attempts"]) == ("failed", 1)  # permanent: not retried
