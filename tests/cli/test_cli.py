"""The ``lorareg`` CLI through click's CliRunner (and once as a real subprocess), against a
real uvicorn server where a server is involved."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli import config_file
from cli.main import main
from cli.params import load_metrics_file
from registry.client import iter_folder
from registry.config import get_settings
from tests.cli.conftest import BASE, variant
from tests.fixtures.server import LiveServer

Run = Callable[..., Result]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "lorareg.json"


@pytest.fixture
def offline(config_path: Path) -> Run:
    """The CLI pointed at a port where nothing listens."""
    env = {"LORAREG_URL": f"http://127.0.0.1:{_closed_port()}", "LORAREG_TOKEN": None,
           "LORAREG_CONFIG": str(config_path), "LORAREG_RETRIES": "0"}

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return run


@pytest.fixture
def cli(live_server: LiveServer, config_path: Path) -> Run:
    """The CLI pointed at the live server with the admin token."""
    env = {"LORAREG_URL": live_server.url, "LORAREG_TOKEN": live_server.admin_token,
           "LORAREG_CONFIG": str(config_path)}

    def run(*args: str, token: str | None = None) -> Result:
        extra = {"LORAREG_TOKEN": token} if token else {}
        return CliRunner().invoke(main, list(args), env={**env, **extra})

    return run


def _json(result: Result) -> object:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------------------- offline


def test_help_documents_exit_codes_and_commands(offline: Run) -> None:
    result = offline("--help")
    assert result.exit_code == 0
    for line in ["2  not found", "5  authentication", "6  server or network failure"]:
        assert line in result.stdout
    for command in ["push", "pull", "ls", "show", "metrics", "yank", "token", "audit", "login"]:
        assert f"  {command}" in result.stdout


@pytest.mark.parametrize("args", [
    ["push"], ["push", ".", "--base", BASE], ["ls", "--limit", "0"], ["nope"],
    ["ls", "--label", "novalue"], ["metrics", "log", "acme/bot@1", "acc=high"],
    ["token", "create", "--name", "x"], ["--bogus"],
])
def test_usage_errors_exit_1(offline: Run, args: list[str]) -> None:
    result = offline(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output


def test_unreachable_server_exits_6_with_one_line(offline: Run) -> None:
    line = _one_error_line(offline("--quiet", "whoami"), 6)
    assert "cannot reach http://127.0.0.1:" in line


def test_invalid_ref_exits_4_before_contacting_anyone(offline: Run) -> None:
    _one_error_line(offline("show", "no-slash"), 4)


def test_json_errors_also_print_the_problem_on_stdout(offline: Run) -> None:
    result = offline("--json", "show", "no-slash")
    _one_error_line(result, 4)
    problem = json.loads(result.stdout)
    assert problem["code"] == "bad_request" and problem["status"] == 400


def test_config_file_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "config.json"
    config_file.save(path, config_file.StoredConfig(url="http://x", token="lrg_a_b"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config_file.load(path) == config_file.StoredConfig("http://x", "lrg_a_b")
    assert config_file.load(tmp_path / "absent.json") == config_file.StoredConfig()
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_broken_config_file_is_one_line_error(offline: Run, config_path: Path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text("{not json")
    assert "is unreadable" in _one_error_line(offline("whoami"), 4)


def test_metrics_file_formats(tmp_path: Path) -> None:
    nested = tmp_path / "eval.json"
    nested.write_text(json.dumps({"accuracy": 0.9, "eval": {"loss": 1, "f1": 0.5}}))
    assert load_metrics_file(nested) == [
        {"key": "accuracy", "value": 0.9}, {"key": "eval.loss", "value": 1.0},
        {"key": "eval.f1", "value": 0.5}]
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"metrics": [{"key": "bleu", "value": 31, "split": "test"}]}))
    assert load_metrics_file(rows) == [{"key": "bleu", "value": 31, "split": "test"}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "x"}))
    with pytest.raises(click.BadParameter, match="not a number"):
        load_metrics_file(bad)


def test_token_create_db_bootstraps_an_admin(
    offline: Run, fresh_db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAREG_DATABASE_URL", fresh_db_url)
    get_settings.cache_clear()
    try:
        result = offline("token", "create", "--name", "bootstrap", "--admin", "--db")
        assert result.exit_code == 0, result.output
        token = result.stdout.strip()
        assert token.startswith("lrg_") and len(result.stdout.splitlines()) == 1
        again = _json(offline("--json", "token", "create", "--name", "ci", "--role", "writer",
                              "--namespace", "acme", "--expires-in-days", "3", "--db"))
        assert isinstance(again, dict)
        assert again["role"] == "writer" and again["namespace"] == "acme"
        assert again["expires_at"]
    finally:
        get_settings.cache_clear()


def test_token_create_db_on_unmigrated_database_is_one_line(
    offline: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAREG_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        line = _one_error_line(offline("token", "create", "--name", "x", "--admin", "--db"), 6)
        assert "lorareg db upgrade" in line
    finally:
        get_settings.cache_clear()


def test_console_script_exit_code_and_stderr(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAREG_")}
    env["LORAREG_CONFIG"] = str(tmp_path / "c.json")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lorareg"), "--retries", "1", "--url",
         f"http://127.0.0.1:{_closed_port()}", "ls"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 6
    assert proc.stderr.startswith("error: cannot reach") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


# ------------------------------------------------------------------------- live server


def test_push_pull_roundtrip_json(cli: Run, adapter_dir: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"accuracy": 0.91}))
    args = ["push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE,
            "--metrics", str(metrics), "--metric", "loss=1.25", "--label", "task=qa",
            "--git-commit", "abc123", "--ci-run-url", "https://ci.example/run/7", "--json"]
    first = _json(cli(*args))
    assert isinstance(first, dict)
    assert first["created"] is True and first["ref"] == "acme/bot@1"
    assert first["uploaded_bytes"] > 0 and len(first["uploaded_digests"]) == len(first["files"])
    assert first["metrics"] == {"accuracy": 0.91, "loss": 1.25}
    assert first["provenance"]["ci_run_url"] == "https://ci.example/run/7"

    second = _json(cli(*args))
    assert isinstance(second, dict)
    assert second["created"] is False and second["uploaded_bytes"] == 0
    assert second["manifest_digest"] == first["manifest_digest"]

    dest = tmp_path / "pulled"
    pulled = _json(cli("--json", "pull", "acme/bot@1", "-o", str(dest)))
    assert isinstance(pulled, dict) and pulled["path"] == str(dest.resolve())
    for rel, src in iter_folder(adapter_dir):
        assert (dest / rel).read_bytes() == src.read_bytes()


def test_push_and_pull_human_output(cli: Run, adapter_dir: Path, tmp_path: Path) -> None:
    result = cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("pushed acme/bot@1 (")
    again = cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    assert "already holds this content" in again.stdout
    quiet = cli("-q", "pull", "acme/bot", "-o", str(tmp_path / "p"))
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "p" / "adapter_config.json").exists()


def test_pull_exit_codes(cli: Run, adapter_dir: Path, tmp_path: Path) -> None:
    _one_error_line(cli("pull", "acme/ghost@1", "-o", str(tmp_path / "x")), 2)
    cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    dest = tmp_path / "exists"
    dest.mkdir()
    assert "--force" in _one_error_line(cli("pull", "acme/bot", "-o", str(dest)), 3)
    assert cli("pull", "acme/bot", "-o", str(dest), "--force").exit_code == 0
    assert (dest / "adapter_config.json").exists()


def test_ls_and_show(cli: Run, adapter_dir: Path) -> None:
    for tag, acc in [("a", "0.5"), ("b", "0.95")]:
        result = cli("push", str(variant(adapter_dir, tag)), "--adapter", "acme/bot",
                     "--base", BASE, "--metric", f"accuracy={acc}", "--label", f"tag={tag}")
        assert result.exit_code == 0, result.stderr
    adapters = cli("ls")
    assert adapters.exit_code == 0
    assert adapters.stdout.splitlines()[0].split() == [
        "ADAPTER", "LATEST", "LABELS", "UPDATED", "DESCRIPTION"]
    assert "acme/bot" in adapters.stdout
    versions = _json(cli("ls", "acme/bot", "--json"))
    assert isinstance(versions, list) and [v["version"] for v in versions] == [2, 1]
    good = _json(cli("--json", "ls", "--metric", "accuracy>=0.9"))
    assert isinstance(good, list) and [v["ref"] for v in good] == ["acme/bot@2"]
    human = cli("ls", "acme/bot", "--label", "tag=a")
    assert "acme/bot@1" in human.stdout and "acme/bot@2" not in human.stdout
    shown = cli("show", "acme/bot@2")
    assert shown.exit_code == 0
    assert "accuracy=0.95" in shown.stdout and "adapter_model.safetensors" in shown.stdout
    assert _json(cli("--json", "show", "acme/bot")) == _json(cli("--json", "show", "acme/bot@2"))


def test_metrics_commands(cli: Run, adapter_dir: Path) -> None:
    cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    logged = cli("metrics", "log", "acme/bot@1", "bleu=31.5", "chrf=55",
                 "--dataset", "wmt", "--split", "test")
    assert logged.exit_code == 0, logged.stderr
    history = _json(cli("--json", "metrics", "show", "acme/bot@1"))
    assert isinstance(history, list)
    assert {(m["key"], m["value"], m["dataset"]) for m in history} == {
        ("bleu", 31.5, "wmt"), ("chrf", 55.0, "wmt")}
    table = cli("metrics", "show", "acme/bot@1")
    assert table.stdout.split()[:6] == ["KEY", "VALUE", "DATASET", "SPLIT", "RECORDED", "BY"]


def test_yank_and_unyank(cli: Run, adapter_dir: Path) -> None:
    cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    assert cli("yank", "acme/bot@1", "--reason", "bad data").stdout == "yanked acme/bot@1\n"
    _one_error_line(cli("yank", "acme/bot@1", "--reason", "again"), 3)
    _one_error_line(cli("yank", "acme/bot", "--reason", "which one?"), 4)
    shown = _json(cli("--json", "show", "acme/bot@1"))
    assert isinstance(shown, dict) and shown["status"] == "yanked"
    assert cli("unyank", "acme/bot@1").exit_code == 0


def test_tokens_and_auth_exit_codes(cli: Run, adapter_dir: Path) -> None:
    created = _json(cli("--json", "token", "create", "--name", "ci", "--role", "reader"))
    assert isinstance(created, dict)
    listed = _json(cli("--json", "token", "list"))
    assert isinstance(listed, list) and created["id"] in {t["id"] for t in listed}
    denied = cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE,
                 token=created["token"])
    _one_error_line(denied, 5)
    assert cli("token", "revoke", created["id"]).exit_code == 0
    _one_error_line(cli("whoami", token=created["token"]), 5)
    _one_error_line(cli("whoami", token="lrg_bogus_bogus"), 5)


def test_audit_command(cli: Run, adapter_dir: Path) -> None:
    cli("push", str(adapter_dir), "--adapter", "acme/bot", "--base", BASE)
    events = _json(cli("--json", "audit", "--namespace", "acme", "--action", "version.pushed"))
    assert isinstance(events, list) and [e["target"] for e in events] == ["acme/bot@1"]
    assert "version.pushed" in cli("audit").stdout


def test_login_stores_private_config_that_later_commands_use(
    live_server: LiveServer, config_path: Path,
) -> None:
    runner = CliRunner()
    env = {"LORAREG_URL": None, "LORAREG_TOKEN": None, "LORAREG_CONFIG": str(config_path)}
    bad = runner.invoke(main, ["login", "--url", live_server.url, "--token", "lrg_x_y"], env=env)
    assert bad.exit_code == 5 and not config_path.exists()
    assert live_server.admin_token is not None
    ok = runner.invoke(main, ["login", "--url", live_server.url],
                       input=live_server.admin_token + "\n", env=env)
    assert ok.exit_code == 0, ok.output
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    who = runner.invoke(main, ["--json", "whoami"], env=env)
    assert json.loads(who.stdout)["role"] == "admin"
    # The stored token belongs to the stored URL: the same server under another name
    # (localhost instead of 127.0.0.1) does not get it.
    other_name = live_server.url.replace("127.0.0.1", "localhost")
    _one_error_line(runner.invoke(main, ["--url", other_name, "whoami"], env=env), 5)
    assert runner.invoke(main, ["logout"], env=env).exit_code == 0
    _one_error_line(runner.invoke(main, ["whoami"], env=env), 5)
