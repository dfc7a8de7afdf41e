"""The ``lorareg`` CLI as a subprocess against a real uvicorn server, on PostgreSQL + S3 (a moto
server over HTTP) and on SQLite + a local folder: push a PEFT adapter made on the fly, list,
show, pull (bytes compared), log metrics, filter by metric, yank, and the documented exit code
of each kind of failure. Independent commands run concurrently to keep the module quick."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from registry.client import iter_folder
from tests.cli.helpers import run, run_all, uvicorn_server
from tests.fixtures.models import TinyModels
from tests.fixtures.s3 import empty_and_delete_bucket
from tests.fixtures.server import LiveServer, free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.e2e

BASE = "tiny/llama@0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module", params=["postgresql+s3", "sqlite+local"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           sqlite_template: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("cli-e2e")
    if request.param == "sqlite+local":
        db = root / "lorareg.db"
        db.write_bytes(sqlite_template.read_bytes())
        with uvicorn_server(root, f"sqlite:///{db}", f"file://{root / 'blobs'}") as live:
            yield live
        return
    database_url: str = request.getfixturevalue("pg_databases").fresh()
    s3: S3Client = request.getfixturevalue("s3_client")
    s3_env: dict[str, str] = request.getfixturevalue("s3_env")
    bucket = f"lorareg-e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        with uvicorn_server(root, database_url, f"s3://{bucket}/registry", **s3_env) as live:
            yield live
    finally:
        empty_and_delete_bucket(s3, bucket)


@pytest.fixture(scope="module")
def adapters(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Path, Path]:
    """Two versions of a real PEFT adapter (the second with an extra file), and a folder
    whose weights are not safetensors."""
    made = tiny_models.adapter(tiny_models.base("llama"), r=4, target_modules=["q_proj", "v_proj"])
    root = tmp_path_factory.mktemp("adapters")
    first, second, broken = root / "v1", root / "v2", root / "broken"
    shutil.copytree(made, first)
    shutil.copytree(made, second)
    (second / "notes.txt").write_text("trained one more epoch\n")
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return first, second, broken


def test_cli_against_a_real_server(server: LiveServer, adapters: tuple[Path, Path, Path],
                                   tmp_path: Path) -> None:
    env = server.env
    first, second, broken = adapters
    push = ["--json", "push", "--adapter", "acme/bot", "--base", BASE]
    v1 = run(env, *push, str(first), "--metric", "accuracy=0.5", "--label", "tag=a").json()
    v2 = run(env, *push, str(second), "--metric", "accuracy=0.95", "--label", "tag=b").json()
    assert (v1["ref"], v2["ref"], v1["created"]) == ("acme/bot@1", "acme/bot@2", True)
    assert v1["base"]["compat_status"] == "unverified"  # tiny/llama is not registered here

    dest = tmp_path / "pulled"
    adapters_ls, shown, pulled, logged, not_found, invalid, auth = run_all([
        (env, ["ls"]),
        (env, ["--json", "show", "acme/bot@2"]),
        (env, ["--json", "pull", "acme/bot@1", "-o", str(dest)]),
        (env, ["metrics", "log", "acme/bot@1", "f1=0.88", "--dataset", "internal",
               "--split", "test"]),
        (env, ["show", "acme/ghost@1"]),
        (env, ["push", str(broken), "--adapter", "acme/broken", "--base", BASE]),
        ({**env, "LORAREG_TOKEN": "lrg_bogus_bogus"}, ["whoami"]),
    ])
    assert adapters_ls.code == 0 and "acme/bot" in adapters_ls.stdout
    assert (shown.json()["metrics"], shown.json()["labels"]) == ({"accuracy": 0.95}, {"tag": "b"})
    assert pulled.json()["path"] == str(dest.resolve())
    assert [(rel, f.read_bytes()) for rel, f in iter_folder(dest)] == [
        (rel, f.read_bytes()) for rel, f in iter_folder(first)]
    assert logged.code == 0, logged.stderr
    assert "not found" in not_found.error_line(2)
    invalid.error_line(4)
    auth.error_line(5)

    accurate, logged_f1, yanked = run_all([
        (env, ["--json", "ls", "--metric", "accuracy>=0.9"]),
        (env, ["--json", "ls", "acme/bot", "--metric", "f1>=0.8"]),
        (env, ["yank", "acme/bot@1", "--reason", "leaks PII on prompt X"]),
    ])
    assert [v["ref"] for v in accurate.json()] == ["acme/bot@2"]
    assert [(v["ref"], v["metrics"]["f1"]) for v in logged_f1.json()] == [("acme/bot@1", 0.88)]
    assert yanked.stdout == "yanked acme/bot@1\n"

    twice, after, active = run_all([
        (env, ["yank", "acme/bot@1", "--reason", "again"]),
        (env, ["--json", "show", "acme/bot@1"]),
        (env, ["--json", "ls", "acme/bot", "--status", "active"]),
    ])
    twice.error_line(3)
    assert (after.json()["status"], after.json()["yank_reason"]) == (
        "yanked", "leaks PII on prompt X")
    assert [v["ref"] for v in active.json()] == ["acme/bot@2"]


def test_failures_without_a_server_exit_6_and_1(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path), "LORAREG_CONFIG": str(tmp_path / "cli.json"),
           "LORAREG_URL": f"http://127.0.0.1:{free_port()}", "LORAREG_RETRIES": "0"}
    offline, usage = run_all([(env, ["ls"]), (env, ["ls", "--limit", "0"])])
    assert "cannot reach http://127.0.0.1:" in offline.error_line(6)
    assert usage.code == 1 and "Traceback" not in usage.stderr
