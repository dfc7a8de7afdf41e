"""Channels, rollouts, rollback, serving checks and export through the ``lorareg`` CLI, against
one real uvicorn server on PostgreSQL (shared by the module; every test has its own adapters)
and a real ``lorareg worker`` process running the rollout controller."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry.client import Client
from registry.errors import Conflict, PermissionDenied
from tests.conftest import PgDatabases
from tests.fixtures.models import TinyModels
from tests.fixtures.server import BIN, ROOT, LiveServer, base_env, bootstrap_admin, start_uvicorn
from tests.fixtures.workers import stop_workers

pytestmark = pytest.mark.e2e

BASE = "tiny/llama@r1"
TARGETS = ["q_proj", "v_proj"]
GOOD_GATES = ["eval.accuracy >= stable - 0.02", "live.error_rate <= 0.05",
              "live.latency_p95_ms <= stable * 1.2"]


@pytest.fixture(scope="module")
def server(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    """uvicorn (tokens required) on a fresh PostgreSQL database, shared by the module."""
    tmp = tmp_path_factory.mktemp("channels-cli")
    url = pg_databases.fresh()
    token = bootstrap_admin(url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=url,
                   LORAREG_BLOB_URL=f"file://{tmp / 'blobs'}")
    srv = start_uvicorn(env, tmp / "server.log")
    srv.admin_token = token
    srv.env = {**env, "LORAREG_URL": srv.url, "LORAREG_TOKEN": token,
               "LORAREG_CONFIG": str(tmp / "config.json"), "HOME": str(tmp / "home")}
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def base_dir(server: LiveServer, tiny_models: TinyModels) -> Path:
    """The tiny base every adapter here is trained on, registered as tiny/llama@r1."""
    path = tiny_models.base("llama")
    with Client(server.url, server.admin_token) as client:
        client.register_base(path, "tiny/llama", "r1", no_cache=True)
    return path


@pytest.fixture(scope="module")
def worker(server: LiveServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[subprocess.Popen[bytes]]:
    """`lorareg worker` on the server's database: the rollout controller, ticking every 0.2 s."""
    home = tmp_path_factory.mktemp("worker") / "w"
    home.mkdir()
    env = {**server.env, "LORAREG_HOME": str(home), "LORAREG_WORKER_POLL_SECONDS": "0.2",
           "LORAREG_FINGERPRINT_CACHE": str(home / "fp.sqlite")}
    with (home / "worker.log").open("ab") as log:
        proc = subprocess.Popen([str(BIN / "lorareg"), "worker"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_workers(proc)


class Cli:
    """``lorareg`` in-process (CliRunner) or as a subprocess, pointed at the server."""

    def __init__(self, server: LiveServer, tmp: Path, adapters: dict[str, Path]) -> None:
        self.server, self.tmp, self.adapters = server, tmp, adapters
        self.env = {k: server.env[k] for k in ("LORAREG_URL", "LORAREG_TOKEN",
                                               "LORAREG_CONFIG")}

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        """Run with --json, expect exit 0, return the parsed output."""
        result = self("--json", *args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(BIN / "lorareg"), *args], env=self.server.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def push(self, adapter: str, tag: str, accuracy: float = 0.9, source: str = "plain"
             ) -> int:
        """Push a new version (the tiny adapter plus a file naming ``tag``)."""
        folder = self.tmp / f"{adapter.replace('/', '_')}-{tag}"
        shutil.copytree(self.adapters[source], folder)
        (folder / "notes.txt").write_text(f"{adapter} {tag}\n")
        out = self.ok("push", str(folder), "--adapter", adapter, "--base", BASE,
                      "--metric", f"accuracy={accuracy}")
        assert out["base"]["compat_status"] == "verified"
        return int(out["version"])


@pytest.fixture
def cli(server: LiveServer, base_dir: Path, tiny_models: TinyModels, tmp_path: Path) -> Cli:
    adapters = {"plain": tiny_models.adapter(base_dir, r=4, target_modules=TARGETS),
                "dora": tiny_models.adapter(base_dir, r=4, target_modules=TARGETS,
                                            use_dora=True)}
    return Cli(server, tmp_path, adapters)


def actions(cli: Cli, ref: str) -> list[str]:
    return [e["action"] for e in reversed(cli.ok("history", ref))]


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------- promote now


def test_promote_now_resolve_and_channel_refs(cli: Cli, tmp_path: Path) -> None:
    v1 = cli.push("acme/now", "1")
    out = cli.ok("promote", f"acme/now@{v1}", "--channel", "staging", "--now",
                 "--reason", "first")
    assert out["rollout"] is None
    assert out["channel"]["stable"] == v1 and out["channel"]["revision"] == 1
    human = cli("promote", f"acme/now@{v1}", "--channel", "prod", "--now")
    assert human.exit_code == 0 and "promoted acme/now@1 to acme/now:prod" in human.stdout
    shown = cli.ok("channel", "show", "acme/now:staging")
    assert (shown["stable"], shown["canary"], shown["profile"]) == (v1, None, "any")
    assert [c["name"] for c in cli.ok("channel", "ls", "acme/now")] == ["prod", "staging"]
    resolved = cli.ok("resolve", "acme/now:staging", "--key", "user-1")
    assert (resolved["ref"], resolved["canary"]) == ("acme/now@1", False)
    assert resolved["etag"]
    # Channel references stand for the channel's stable version when reading versions.
    assert cli.ok("show", "acme/now:staging")["ref"] == "acme/now@1"
    pulled = cli.ok("pull", "acme/now:staging", "-o", str(tmp_path / "pulled"))
    assert pulled["ref"] == "acme/now@1"
    assert (tmp_path / "pulled" / "adapter_config.json").is_file()
    assert actions(cli, "acme/now:staging") == ["promoted"]
    history = cli("history", "acme/now:staging")
    assert history.exit_code == 0
    assert "promoted" in history.stdout and "- -> @1" in history.stdout
    assert "first" in history.stdout


def test_errors_exit_codes(cli: Cli) -> None:
    v1 = cli.push("acme/errs", "1")
    one_error(cli("promote", f"acme/errs@{v1}", "--channel", "prod"), 3)  # no stable yet
    one_error(cli("promote", "acme/errs@9", "--channel", "prod", "--now"), 2)
    one_error(cli("channel", "show", "acme/errs:nope"), 2)
    one_error(cli("rollback", "acme/errs:nope"), 2)
    one_error(cli("promote", "acme/errs@latest", "--channel", "prod", "--now"), 4)
    one_error(cli("promote", f"acme/errs@{v1}", "--channel", "prod", "--steps", "5,50"), 4)
    for usage in (["--steps", "x"], ["--interval", "10 parsecs"], ["--interval", "0s"]):
        result = cli("promote", f"acme/errs@{v1}", "--channel", "prod", *usage)
        assert result.exit_code == 1, (usage, result.output)


# ------------------------------------------------------------------------------- canaries


def report_until_done(cli: Cli, watch: subprocess.Popen[str], reports: list[list[str]],
                      timeout: float = 60.0) -> tuple[int, str, str]:
    """Send live reports (``lorareg live report`` args) every 0.2 s until ``watch`` exits."""
    deadline = time.monotonic() + timeout
    while watch.poll() is None and time.monotonic() < deadline:
        for args in reports:
            result = cli("live", "report", *args)
            assert result.exit_code == 0, result.output
        time.sleep(0.2)
    if watch.poll() is None:
        watch.kill()
    out, err = watch.communicate(timeout=30)
    return watch.returncode, out, err


def stable_on_prod(cli: Cli, adapter: str) -> tuple[int, int]:
    v1 = cli.push(adapter, "1", accuracy=0.90)
    v2 = cli.push(adapter, "2", accuracy=0.91)
    cli.ok("promote", f"{adapter}@{v1}", "--channel", "prod", "--now")
    return v1, v2


def start_canary(cli: Cli, ref: str, *extra: str) -> dict[str, Any]:
    gates = [arg for gate in GOOD_GATES for arg in ("--gate", gate)]
    out = cli.ok("promote", ref, "--channel", "prod", "--steps", "50,100", "--interval", "1s",
                 *gates, "--reason", "canary", *extra)
    rollout: dict[str, Any] = out["rollout"]
    assert rollout["status"] == "progressing" and rollout["weight_bp"] == 5000
    return rollout


def test_canary_with_gates_is_promoted_by_the_worker(
    cli: Cli, worker: subprocess.Popen[bytes]
) -> None:
    v1, v2 = stable_on_prod(cli, "acme/canary")
    rollout = start_canary(cli, f"acme/canary@{v2}")
    watch = cli.spawn("rollout", "watch", str(rollout["id"]), "--timeout", "60s")
    code, out, err = report_until_done(cli, watch, [
        [f"acme/canary@{v1}", "--requests", "100", "--errors", "1",
         "--value", "latency_p95_ms=100"],
        [f"acme/canary@{v2}", "--requests", "100", "--errors", "0",
         "--value", "latency_p95_ms=105"],
    ])
    assert code == 0, (out, err)
    assert f"rollout {rollout['id']} promoted" in out
    channel = cli.ok("channel", "show", "acme/canary:prod")
    assert (channel["stable"], channel["canary"], channel["rollout_id"]) == (v2, None, None)
    status = cli.ok("rollout", "status", "acme/canary:prod")
    assert status["id"] == rollout["id"] and status["status"] == "promoted"
    verdicts = {(e["step_index"], e["gate"]): e["verdict"] for e in status["evaluations"]
                if e["verdict"] != "inconclusive"}
    assert set(verdicts.values()) == {"pass"}
    assert {step for step, _ in verdicts} == {0, 1}
    table = cli("rollout", "status", str(rollout["id"]))
    assert table.exit_code == 0 and "passed" in table.stdout and "live.error_rate" in table.stdout
    seen = actions(cli, "acme/canary:prod")
    assert seen[:3] == ["promoted", "rollout.started", "rollout.step"]
    assert seen.count("rollout.step") == 2 and seen[-1] == "rollout.promoted"


def test_bad_canary_is_aborted_and_stable_keeps_serving(
    cli: Cli, worker: subprocess.Popen[bytes]
) -> None:
    v1, _ = stable_on_prod(cli, "acme/bad")
    v3 = cli.push("acme/bad", "3", accuracy=0.895)
    rollout = start_canary(cli, f"acme/bad@{v3}")
    assert cli.ok("resolve", "acme/bad:prod", "--key", "k")["version"] in (v1, v3)
    watch = cli.spawn("rollout", "watch", str(rollout["id"]), "--timeout", "60s")
    code, out, err = report_until_done(cli, watch, [
        [f"acme/bad@{v1}", "--requests", "100", "--errors", "0",
         "--value", "latency_p95_ms=100"],
        [f"acme/bad@{v3}", "--requests", "100", "--errors", "30",
         "--value", "latency_p95_ms=300"],
    ])
    assert code == 3, (out, err)
    assert f"rollout {rollout['id']} on acme/bad:prod was aborted: gates failed" in err
    channel = cli.ok("channel", "show", "acme/bad:prod")
    assert (channel["stable"], channel["canary"], channel["canary_weight_bp"]) == (v1, None, 0)
    for key in ("a", "b", "c", "d"):
        assert cli.ok("resolve", "acme/bad:prod", "--key", key)["version"] == v1
    status = cli.ok("rollout", "status", str(rollout["id"]))
    assert status["status"] == "aborted"
    assert "fail" in {e["verdict"] for e in status["evaluations"]}
    assert actions(cli, "acme/bad:prod") == [
        "promoted", "rollout.started", "rollout.step", "rollout.aborted"]
    # Every step is visible to people too.
    history = cli("history", "acme/bad:prod")
    for text in ("rollout.started", "rollout.step", "rollout.aborted", "@3 50%",
                 "gates failed", "rollout-controller"):
        assert text in history.stdout, history.stdout


def test_pause_resume_abort_by_hand(cli: Cli) -> None:
    _, v2 = stable_on_prod(cli, "acme/manual")
    out = cli.ok("promote", f"acme/manual@{v2}", "--channel", "prod", "--interval", "1h")
    rid = str(out["rollout"]["id"])
    assert cli.ok("rollout", "pause", rid, "--reason", "looking")["status"] == "paused"
    one_error(cli("rollout", "pause", rid), 3)
    assert cli.ok("rollout", "resume", "acme/manual:prod")["status"] == "progressing"
    aborted = cli.ok("rollout", "abort", rid, "--reason", "not today")
    assert (aborted["status"], aborted["weight_bp"]) == ("aborted", 0)
    one_error(cli("rollout", "abort", rid), 3)
    assert actions(cli, "acme/manual:prod")[-3:] == [
        "rollout.paused", "rollout.resumed", "rollout.aborted"]
    one_error(cli("rollout", "status", "999999"), 2)


# ---------------------------------------------------------------------- compare-and-swap


def run_two(cli: Cli, a: list[str], b: list[str]) -> list[tuple[int, str]]:
    procs = [cli.spawn(*a), cli.spawn(*b)]
    return [(p.wait(60), p.communicate()[1]) for p in procs]


def test_two_concurrent_promotes_one_wins_one_conflicts(cli: Cli) -> None:
    v1, v2 = stable_on_prod(cli, "acme/race")
    v3 = cli.push("acme/race", "3")
    revision = str(cli.ok("channel", "show", "acme/race:prod")["revision"])
    # Two pipelines that read the same revision: exactly one moves the channel.
    outcomes = run_two(
        cli, ["promote", f"acme/race@{v2}", "-c", "prod", "--now", "--expect-revision", revision],
        ["promote", f"acme/race@{v3}", "-c", "prod", "--now", "--expect-revision", revision])
    assert sorted(code for code, _ in outcomes) == [0, 3], outcomes
    loser = next(err for code, err in outcomes if code == 3)
    assert "revision" in loser and loser.count("\n") == 1
    assert cli.ok("channel", "show", "acme/race:prod")["revision"] == int(revision) + 1
    # Without --expect-revision each reads the revision itself first; still one winner.
    outcomes = run_two(
        cli, ["promote", f"acme/race@{v1}", "-c", "prod", "--interval", "1h"],
        ["promote", f"acme/race@{v1}", "-c", "prod", "--interval", "1h"])
    assert sorted(code for code, _ in outcomes) == [0, 3], outcomes


def test_client_reads_the_revision_it_compares_and_swaps(server: LiveServer, cli: Cli) -> None:
    v1, v2 = stable_on_prod(cli, "acme/cas")
    with Client(server.url, server.admin_token) as a, Client(server.url,
                                                             server.admin_token) as b:
        seen = a.channel("acme/cas:prod").revision
        b.promote(f"acme/cas@{v2}", "prod", now=True)
        with pytest.raises(Conflict, match="revision"):
            a.promote(f"acme/cas@{v1}", "prod", now=True, expect_revision=seen)
        with pytest.raises(Conflict):
            a.rollback("acme/cas:prod", expect_revision=seen)
        # A channel that does not exist yet is expected at revision 0 (its first revision).
        created = a.promote(f"acme/cas@{v1}", "canary-2", now=True).channel
        assert created.revision == 1
        with pytest.raises(Conflict):
            b.promote(f"acme/cas@{v2}", "canary-2", now=True, expect_revision=0)


def test_reader_token_reports_live_only_for_its_namespace(server: LiveServer, cli: Cli) -> None:
    """Routers resolve with reader tokens, and report with them (README: roles)."""
    v1 = cli.push("acme/readonly", "1")
    with Client(server.url, server.admin_token) as admin:
        own = admin.create_token("reader-live", "reader", namespace="acme").token
        other = admin.create_token("reader-other", "reader", namespace="globex").token
    sample = {"adapter": "acme/readonly", "version": v1, "requests": 10, "errors": 1}
    with Client(server.url, own) as reader:
        assert reader.report_live([sample]) == 1
    with Client(server.url, other) as outsider, pytest.raises(PermissionDenied):
        outsider.report_live([{**sample, "errors": 10}])


# ------------------------------------------------------------------------ serving checks


def test_check_and_vllm_channel_refuse_dora(cli: Cli) -> None:
    plain = cli.push("acme/dora", "plain")
    dora = cli.push("acme/dora", "dora", source="dora")
    ok = cli("check", f"acme/dora@{plain}", "--profile", "vllm")
    assert ok.exit_code == 0 and "can be served by profile vllm" in ok.stdout
    refused = cli("check", f"acme/dora@{dora}", "--profile", "vllm")
    line = one_error(refused, 4)
    assert "DoRA" in line and "DoRA" in refused.stdout  # the problems are listed
    problem = cli("--json", "check", f"acme/dora@{dora}")
    assert problem.exit_code == 4
    assert any("DoRA" in p for p in json.loads(problem.stdout)["problems"])
    assert cli("check", f"acme/dora@{dora}", "--profile", "any").exit_code == 0
    configured = cli.ok("channel", "set", "acme/dora:prod", "--profile", "vllm")
    assert configured["profile"] == "vllm"
    line = one_error(cli("promote", f"acme/dora@{dora}", "--channel", "prod", "--now"), 4)
    assert "vllm" in line and "DoRA" in line
    cli.ok("promote", f"acme/dora@{plain}", "--channel", "prod", "--now")
    assert cli("check", "acme/dora:prod").exit_code == 0  # a channel's stable version
    assert actions(cli, "acme/dora:prod") == ["configured", "promoted"]


# ------------------------------------------------------------------------------- rollback


def test_rollback_previous_and_to(cli: Cli) -> None:
    versions = [cli.push("acme/back", str(i)) for i in (1, 2, 3)]
    for v in versions:
        cli.ok("promote", f"acme/back@{v}", "--channel", "prod", "--now")
    human = cli("rollback", "acme/back:prod", "--reason", "bad answers")
    assert human.exit_code == 0, human.output
    assert "rolled back acme/back:prod to @2 (was @3)" in human.stdout
    back = cli.ok("rollback", "acme/back:prod", "--to", "1", "--reason", "further")
    assert back["stable"] == 1
    one_error(cli("rollback", "acme/back:prod", "--expect-revision", "1"), 3)
    # A rollback during a canary aborts it in the same change.
    out = cli.ok("promote", "acme/back@3", "--channel", "prod", "--interval", "1h")
    assert cli.ok("rollback", "acme/back:prod", "--to", "2")["canary"] is None
    assert cli.ok("rollout", "status", str(out["rollout"]["id"]))["status"] == "aborted"
    events = cli.ok("history", "acme/back:prod")
    moves = [(e["action"], e["from_stable"], e["to_stable"], e["reason"])
             for e in reversed(events) if e["action"] == "rollback"]
    assert moves == [("rollback", 3, 2, "bad answers"), ("rollback", 2, 1, "further"),
                     ("rollback", 1, 2, "")]


# --------------------------------------------------------------------------------- export


def folder_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_layout_for_vllm_filesystem_resolver(cli: Cli, tmp_path: Path) -> None:
    a1, a2 = cli.push("exp/alpha", "1"), cli.push("exp/alpha", "2")
    b1 = cli.push("exp/beta", "1")
    cli.ok("promote", f"exp/alpha@{a1}", "-c", "prod", "--now")
    cli.ok("promote", f"exp/beta@{b1}", "-c", "prod", "--now")
    cli.ok("promote", f"exp/alpha@{a2}", "-c", "staging", "--now")
    out = tmp_path / "loras"
    first = cli.ok("export", "exp", "--channel", "prod", "--dir", str(out))
    assert {a["name"]: a["version"] for a in first["adapters"]} == {"alpha": 1, "beta": 1}
    assert first["downloaded_bytes"] > 0
    for item in first["adapters"]:
        link = out / item["name"]
        assert link.is_symlink()
        assert os.readlink(link) == f".lorareg/{item['name']}@{item['version']}-" \
                                    f"{item['manifest_digest'][:12]}"
        assert (link / "adapter_config.json").is_file()  # what vLLM's resolver opens
        version = cli.ok("show", item["ref"])
        assert folder_digests(link) == {f["path"]: f["digest"] for f in version["files"]}
        weights = link.resolve() / "adapter_model.safetensors"
        assert not weights.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    alpha_v1 = (out / "alpha").resolve()
    inode = alpha_v1.stat().st_ino

    again = cli.ok("export", "exp", "--channel", "prod", "--dir", str(out))
    assert again["downloaded_bytes"] == 0 and again["pruned"] == []
    assert not any(a["switched"] for a in again["adapters"])
    assert (out / "alpha").resolve().stat().st_ino == inode

    cli.ok("promote", f"exp/alpha@{a2}", "-c", "prod", "--now")
    switched = cli.ok("export", "exp", "--channel", "prod", "--dir", str(out), "--drain", "0")
    changed = {a["name"]: (a["switched"], a["downloaded_bytes"] > 0)
               for a in switched["adapters"]}
    assert changed == {"alpha": (True, True), "beta": (False, False)}
    assert (out / "alpha").resolve() != alpha_v1 and not alpha_v1.exists()
    assert switched["pruned"] == [alpha_v1.name]
    assert cli.ok("show", "exp/alpha@2")["manifest_digest"][:12] in os.readlink(out / "alpha")
    human = cli("export", "exp", "--channel", "prod", "--dir", str(out))
    assert human.exit_code == 0 and "alpha -> .lorareg/alpha@2-" in human.stdout
    assert "(unchanged, 0 B downloaded)" in human.stdout


def test_export_switches_atomically_under_readers(cli: Cli, tmp_path: Path) -> None:
    """A reader opening DIR/<name>/... while the link flips always gets one whole version."""
    v1, v2 = cli.push("swap/model", "1"), cli.push("swap/model", "2")
    expected = {v: {f["path"]: f["digest"] for f in cli.ok("show", f"swap/model@{v}")["files"]}
                for v in (v1, v2)}
    out = tmp_path / "loras"
    cli.ok("promote", f"swap/model@{v1}", "-c", "prod", "--now")
    cli.ok("export", "swap", "--channel", "prod", "--dir", str(out))
    stop, seen, failures = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            try:
                notes = (out / "model" / "notes.txt").read_text()
                seen.add(notes)
            except OSError as exc:  # a missing or half-switched link
                failures.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for target in (v2, v1, v2):
            cli.ok("rollback", "swap/model:prod", "--to", str(target))
            cli.ok("export", "swap", "--channel", "prod", "--dir", str(out), "--drain", "0")
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert seen <= {"swap/model 1\n", "swap/model 2\n"} and len(seen) == 2
    assert folder_digests(out / "model") == expected[v2]
    assert [p.name for p in (out / ".lorareg").iterdir() if not p.name.startswith(".")] == [
        os.readlink(out / "model").split("/")[1]]


def test_export_refuses_foreign_paths_and_removes_adapters_gone(cli: Cli, tmp_path: Path
                                                                ) -> None:
    v1 = cli.push("own/kept", "1")
    cli.ok("promote", f"own/kept@{v1}", "-c", "prod", "--now")
    out = tmp_path / "loras"
    (out / ".lorareg" / "ghost@1-0123456789ab").mkdir(parents=True)
    (out / "ghost").symlink_to(".lorareg/ghost@1-0123456789ab")  # exported once, gone now
    (out / "mine").mkdir()  # somebody else's folder: never touched
    result = cli.ok("export", "own", "--channel", "prod", "--dir", str(out), "--drain", "0")
    assert result["removed"] == ["ghost"] and result["pruned"] == ["ghost@1-0123456789ab"]
    assert not (out / "ghost").is_symlink() and (out / "mine").is_dir()
    (out / "kept").unlink()
    (out / "kept").mkdir()
    line = one_error(cli("export", "own", "--channel", "prod", "--dir", str(out)), 3)
    assert "is not a symlink lorareg export made" in line
    one_error(cli("export", "own", "--channel", "BAD", "--dir", str(out)), 4)


def test_export_keeps_unused_links_and_folders_through_the_drain(cli: Cli, tmp_path: Path
                                                                   ) -> None:
    """An engine may still hold an old folder's path, or still be asked for an adapter that
    left the channel: both stay until the drain has passed since the export first saw them
    unused (the export used to delete the old folder right after switching)."""
    v1, v2 = cli.push("drain/kept", "1"), cli.push("drain/kept", "2")
    cli.ok("promote", f"drain/kept@{v1}", "-c", "prod", "--now")
    out = tmp_path / "loras"
    cli.ok("export", "drain", "--channel", "prod", "--dir", str(out))
    old = (out / "kept").resolve()
    (out / ".lorareg" / "gone@1-0123456789ab").mkdir()  # an adapter no longer on the channel
    (out / ".lorareg" / "gone@1-0123456789ab" / "adapter_config.json").write_text("{}")
    (out / "gone").symlink_to(".lorareg/gone@1-0123456789ab")
    cli.ok("promote", f"drain/kept@{v2}", "-c", "prod", "--now")
    kept = cli.ok("export", "drain", "--channel", "prod", "--dir", str(out))
    assert kept["removed"] == [] and kept["pruned"] == [] and old.is_dir()
    assert (out / "gone" / "adapter_config.json").is_file()
    assert sorted(kept["draining"]) == ["folder:gone@1-0123456789ab", f"folder:{old.name}",
                                        "link:gone"]
    assert (out / "kept").resolve() != old  # the switch itself is not delayed
    again = cli.ok("export", "drain", "--channel", "prod", "--dir", str(out), "--drain", "1h")
    assert again["removed"] == [] and again["pruned"] == [] and old.is_dir()
    done = cli.ok("export", "drain", "--channel", "prod", "--dir", str(out), "--drain", "0")
    assert done["removed"] == ["gone"] and not (out / "gone").is_symlink()
    assert sorted(done["pruned"]) == ["gone@1-0123456789ab", old.name] and not old.exists()
    assert done["draining"] == {}


def test_help_lists_the_channel_commands(cli: Cli) -> None:
    result = cli("--help")
    for command in ("promote", "rollback", "history", "check", "channel", "rollout", "live",
                    "resolve", "export"):
        assert f"  {command}" in result.stdout
