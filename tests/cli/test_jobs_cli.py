"""``lorareg merge`` and ``lorareg jobs`` against a real uvicorn server with no worker (so jobs
stay queued: joining, timeouts, cancelling), plus the pure logic of waiting and exit codes.
Merges that run end to end are in tests/e2e/test_merge_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cli.params import parse_duration
from registry import errors
from registry.client import Client, JobOut, job_error
from tests.cli.helpers import uvicorn_server
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer

REV = "0123456789abcdef0123456789abcdef01234567"
Run = Callable[..., Result]

# ------------------------------------------------------------------------------ pure logic


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1h30m", 5400.0), ("45", 45.0),
    ("0.5s", 0.5), ("1d", 86400.0), (" 2H ", 7200.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "m", "0s", "-5m", "5m5"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(text)


def _job(status: str, **over: Any) -> JobOut:
    return JobOut.model_validate({
        "id": 7, "kind": "merge", "target": "acme/bot@1", "status": status, "progress": 0.5,
        "progress_message": "merging", "attempts": 1, "max_attempts": 3, "error": None,
        "error_code": None, "namespace": "acme", "payload": {}, "result": None,
        "worker_id": None, "cancel_requested": False, "created_by": "admin",
        "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None, **over})


def test_job_error_maps_outcomes_to_exit_codes() -> None:
    assert job_error(_job("succeeded")) is None
    cancelled = job_error(_job("cancelled"))
    assert isinstance(cancelled, errors.Conflict) and cancelled.exit_code == 3
    permanent = job_error(_job("failed", error="base weights differ"))
    assert permanent is not None and permanent.exit_code == 4
    assert "job 7 (merge acme/bot@1) failed: base weights differ" in permanent.detail
    exhausted = job_error(_job("failed", attempts=3, error="S3 down"))
    assert exhausted is not None and exhausted.exit_code == 6
    coded = job_error(_job("failed", attempts=3, error_code="incompatible_base", error="x"))
    assert isinstance(coded, errors.IncompatibleBase)
    other = job_error(_job("failed", error_code="not_found", error="no weights"))
    assert other is not None and other.exit_code == 6
    waiting = job_error(_job("running"))
    assert waiting is not None and waiting.exit_code == 6 and "50%, merging" in waiting.detail


def test_wait_job_backs_off_and_reports_every_poll() -> None:
    statuses = ["queued", "running", "running", "running", "succeeded"]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/jobs/7"
        return httpx.Response(200, json=_job(statuses.pop(0)).model_dump(mode="json"))

    sleeps: list[float] = []
    seen: list[str] = []
    with Client("http://registry.test", transport=httpx.MockTransport(handler)) as c:
        c.sleep = sleeps.append
        final = c.wait_job(7, progress=lambda j: seen.append(j.status))
    assert final.status == "succeeded" and seen[-1] == "succeeded" and len(seen) == 5
    assert sleeps == pytest.approx([0.2, 0.3, 0.45, 0.675])


def test_wait_job_returns_the_running_job_when_the_timeout_passes() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_job("running").model_dump(mode="json"))

    with Client("http://registry.test", transport=httpx.MockTransport(handler)) as c:
        assert c.wait_job(7, timeout=0.3).status == "running"


def test_usage_errors_exit_1() -> None:
    env = {"LORAREG_URL": "http://127.0.0.1:9", "LORAREG_RETRIES": "0"}
    for args in (["merge"], ["merge", "acme/bot@1", "--timeout", "soon"],
                 ["merge", "acme/bot@1", "--base", "0"], ["jobs", "show", "x"],
                 ["jobs", "ls", "--status", "sleeping"], ["jobs", "watch", "1", "--timeout", "0"]):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output


# ----------------------------------------------------------------- a server without workers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
           ) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("jobs-cli")
    db = root / "lorareg.db"
    db.write_bytes(sqlite_template.read_bytes())
    with uvicorn_server(root, f"sqlite:///{db}", f"file://{root / 'blobs'}") as live:
        yield live


@pytest.fixture
def cli(server: LiveServer, tmp_path: Path) -> Run:
    env = {"LORAREG_URL": server.url, "LORAREG_TOKEN": server.admin_token,
           "LORAREG_CONFIG": str(tmp_path / "cli.json"),
           "LORAREG_FINGERPRINT_CACHE": str(tmp_path / "fingerprints.sqlite")}

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return run


def _json(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def _one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pushed(server: LiveServer, tiny_models: TinyModels) -> str:
    """acme/queued-bot@1 on the registered tiny Llama base."""
    base = tiny_models.base("llama")
    adapter = tiny_models.adapter(base, r=4, target_modules=["q_proj", "v_proj"])
    with Client(server.url, server.admin_token,
                fingerprint_cache_path=Path(server.env["LORAREG_FINGERPRINT_CACHE"])) as c:
        c.register_base(base, "tiny/llama", REV)
        version = c.push(adapter, "acme/queued-bot", f"tiny/llama@{REV}")
    assert version.base.compat_status == "verified"
    return str(version.ref)


def test_queued_merge_is_joined_times_out_and_cancels(cli: Run, pushed: str,
                                                     tmp_path: Path) -> None:
    first = _json(cli("--json", "merge", pushed))
    assert first["status"] == "queued" and first["artifact_id"] is None
    again = _json(cli("--json", "merge", pushed))
    assert again["job_id"] == first["job_id"]  # idempotent: the queued job is joined
    job_id = str(first["job_id"])
    human = cli("merge", pushed)
    assert human.stdout == (f"{pushed}: joined queued merge job {job_id} "
                            f"(lorareg jobs watch {job_id})\n")

    line = _one_error_line(cli("merge", pushed, "--wait", "--timeout", "1s"), 6)
    assert f"job {job_id} (merge {pushed}) is still queued" in line
    listed = _json(cli("--json", "jobs", "ls", "--status", "queued", "--kind", "merge"))
    assert [j["id"] for j in listed] == [first["job_id"]]
    assert "queued" in cli("jobs", "show", job_id).stdout
    # nothing is merged yet
    _one_error_line(cli("pull", pushed, "--merged", "-o", str(tmp_path / "m")), 2)

    assert cli("jobs", "cancel", job_id).stdout == f"cancelled job {job_id}\n"
    assert "was cancelled" in _one_error_line(cli("jobs", "watch", job_id), 3)
    assert "already cancelled" in _one_error_line(cli("jobs", "cancel", job_id), 3)
    fresh = _json(cli("--json", "merge", pushed))
    assert fresh["job_id"] != first["job_id"] and fresh["status"] == "queued"
    assert _json(cli("--json", "jobs", "cancel", str(fresh["job_id"])))["status"] == "cancelled"


def test_merge_refusals_exit_with_their_codes(cli: Run, server: LiveServer,
                                              tiny_models: TinyModels) -> None:
    adapter = tiny_models.adapter(tiny_models.base("llama"), r=4,
                                  target_modules=["q_proj", "v_proj"])
    with Client(server.url, server.admin_token) as c:
        c.push(adapter, "acme/loose-bot", f"other/unregistered@{REV}")
    assert "not registered" in _one_error_line(cli("merge", "acme/loose-bot@1"), 4)
    _one_error_line(cli("merge", "acme/ghost@1"), 2)
    _one_error_line(cli("jobs", "show", "999999"), 2)


def test_help_lists_the_new_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("base", "verify", "merge", "jobs"):
        assert f"  {command}" in result.stdout
    merge_help = CliRunner().invoke(main, ["merge", "--help"]).stdout
    assert "3  the job was cancelled" in merge_help and "--timeout" in merge_help


@pytest.mark.parametrize("missing", [("torch",), ("numba",), ("torch", "numba")])
def test_serve_without_the_worker_extra_says_what_is_missing(
    missing: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lorareg serve` from the plain install runs without merges and says how to get them."""
    import importlib.util
    import threading

    from cli import server

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real(name, *a))
    server._start_embedded_workers(1, threading.Event())
    err = capsys.readouterr().err
    assert f"merges are disabled: the worker needs {' and '.join(missing)} " in err
    assert "lorareg[worker]" in err
    assert not [t for t in threading.enumerate()
                if t.name == "controller" or t.name.startswith("worker-")]  # nothing started
