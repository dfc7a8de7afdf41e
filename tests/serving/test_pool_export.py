"""``lorareg export --pool`` without an engine (registry/serving/export.py, cli/export.py):
the layout vLLM's filesystem resolver reads, the drain (an injected clock, no sleeping), foreign
folders, a served name that would map to two digests, a kill mid-download, repairs; and the
runtime-API driver against hand-written fake engines (httpx.MockTransport).

One real uvicorn server on PostgreSQL for the module (the tiny base registered); every test
has its own namespace, so their desired sets never meet.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry.client import Client
from registry.errors import Conflict, EngineRefused, EngineUnavailable, PermissionDenied
from registry.served_names import parse_served_name
from registry.serving.drain import utcnow
from registry.serving.export import SIDECAR, STORE, PoolExport, PoolExportResult, Sidecar
from registry.serving.vllm import VllmRuntime
from tests.conftest import PgDatabases
from tests.fixtures.adapters import adapter_files, lora_config, lora_tensors
from tests.fixtures.server import BIN, ROOT, LiveServer, base_env, tiny_base_server

pytestmark = pytest.mark.e2e

BASE = "tiny/llama@abc"
MODEL_ID = "/models/tiny-llama"
DRAIN = 600
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


@pytest.fixture(scope="module")
def server(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    """uvicorn (tokens required) on a fresh database with the tiny base registered."""
    with tiny_base_server(pg_databases.fresh(), tmp_path_factory.mktemp("pool-export")) as srv:
        yield srv


class Clock:
    """An injected clock: export's idea of now, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Reg:
    """One test's namespace on the shared server: pushes, a pool bound to ``ns/bot:prod``."""

    client: Client
    ns: str
    tmp: Path
    server: LiveServer

    @property
    def pool(self) -> str:
        return f"{self.ns}/cpu"

    def push(self, seed: int, adapter: str = "bot", extra: dict[str, bytes] | None = None
             ) -> int:
        folder = self.tmp / f"push-{adapter}-{seed}"
        folder.mkdir()
        files = adapter_files(config=lora_config(4), tensors=lora_tensors(4, seed=seed),
                              extra=extra)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return int(self.client.push(folder, f"{self.ns}/{adapter}", BASE).version)

    def exporter(self, root: Path, clock: Clock | None = None, **kw: Any) -> PoolExport:
        return PoolExport(self.client, self.pool, root, clock=clock or Clock(), **kw)

    def served(self, number: int, adapter: str = "bot") -> str:
        return self.client.check_pool(f"{self.ns}/{adapter}@{number}", self.pool).served_name

    def cli(self, *args: str, token: str | None = None) -> Result:
        env = {**self.server.env, **({"LORAREG_TOKEN": token} if token else {})}
        return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def reg(server: LiveServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Reg]:
    """A namespace named after the test, a pool ``<ns>/cpu`` bound to ``<ns>/bot:prod``."""
    ns = "t" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]
    with Client(server.url, server.admin_token) as client:
        client.create_pool(f"{ns}/cpu", base=BASE, model_id=MODEL_ID, dtype="bfloat16",
                           max_loras=4, drain_seconds=DRAIN)
        yield Reg(client, ns, tmp_path, server)


def start(reg: Reg, *seeds: int) -> list[int]:
    """Push one version per seed; the first becomes stable on ``prod``, which the pool serves."""
    numbers = [reg.push(seed) for seed in seeds]
    reg.client.promote(f"{reg.ns}/bot@{numbers[0]}", "prod", now=True)
    reg.client.bind_pool(reg.pool, f"{reg.ns}/bot:prod")
    return numbers


def canary(reg: Reg, number: int) -> None:
    """A canary at 50 % (no worker runs here, so it stays a canary)."""
    reg.client.promote(f"{reg.ns}/bot@{number}", "prod", steps=[50, 100],
                       interval_seconds=3600)


def back(reg: Reg) -> None:
    """Roll ``prod`` back to its stable version 1, aborting the canary."""
    reg.client.rollback(f"{reg.ns}/bot:prod", to=1)


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def statuses(result: PoolExportResult) -> dict[str, str]:
    return {o.served_name: o.status
            for o in [*result.members, *result.draining, *result.removed]}


# ------------------------------------------------------------------------------ layout


def test_every_desired_version_gets_an_immutable_folder_vllm_accepts(reg: Reg, tmp_path: Path
                                                                      ) -> None:
    v1, v2, v3 = start(reg, 1, 2, 3)
    canary(reg, v2)
    reg.client.pin_pool(reg.pool, f"{reg.ns}/bot@{v3}")
    root = tmp_path / "loras"
    first = reg.exporter(root).run()
    wanted = {reg.served(v) for v in (v1, v2, v3)}
    assert statuses(first) == dict.fromkeys(wanted, "exported")
    assert names(root) == wanted and first.downloaded_bytes > 0
    for number in (v1, v2, v3):
        name, version = reg.served(number), reg.client.version(f"{reg.ns}/bot@{number}")
        folder = root / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == MODEL_ID  # what vLLM's resolver compares
        assert config["peft_type"] == "LORA"
        sidecar = Sidecar.read(folder)
        assert sidecar is not None and sidecar.pool == reg.pool
        assert sidecar.ref == f"{reg.ns}/bot@{number}" and sidecar.served_name == name
        assert sidecar.manifest_digest == version.manifest_digest
        assert sidecar.original_base_model_name_or_path == "tiny/llama"
        registry = {f.path: f.digest for f in version.files}
        assert sidecar.original_config_sha256 == registry["adapter_config.json"]
        local = digests(folder)
        assert local.pop(SIDECAR) and local.pop("adapter_config.json")
        assert local == {p: d for p, d in registry.items() if p != "adapter_config.json"}
        assert all(not p.stat().st_mode & WRITE_BITS for p in folder.iterdir())
    inodes = {n: (root / n).stat().st_ino for n in wanted}

    again = reg.exporter(root).run()
    assert statuses(again) == dict.fromkeys(wanted, "unchanged")
    assert again.downloaded_bytes == 0
    assert {n: (root / n).stat().st_ino for n in wanted} == inodes


def test_the_cli_exports_a_pool_and_names_each_folder(reg: Reg, tmp_path: Path) -> None:
    (v1,) = start(reg, 1)
    root = tmp_path / "loras"
    human = reg.cli("export", "--pool", reg.pool, "--dir", str(root))
    assert human.exit_code == 0, human.stderr
    assert f"{reg.served(v1)}  exported ({reg.ns}/bot@{v1}, " in human.stdout
    out = reg.cli("--json", "export", "--pool", reg.pool, "--dir", str(root))
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [(m["served_name"], m["status"]) for m in doc["members"]] == [
        (reg.served(v1), "unchanged")]
    assert doc["drain_seconds"] == DRAIN and doc["engine"] is None


# ------------------------------------------------------------------------------- drain


def test_never_deletes_a_desired_folder_or_one_within_the_drain(reg: Reg, tmp_path: Path
                                                                ) -> None:
    v1, v2 = start(reg, 1, 2)
    canary(reg, v2)
    root, clock = tmp_path / "loras", Clock()
    job = reg.exporter(root, clock)
    job.run()
    one, two = reg.served(v1), reg.served(v2)
    back(reg)  # v2 leaves the desired set
    clock.now = utcnow()
    kept = job.run()
    assert statuses(kept) == {one: "unchanged", two: "draining"}
    (draining,) = kept.draining
    assert draining.left_at is not None and draining.removable_at is not None
    assert draining.removable_at >= draining.left_at + timedelta(seconds=DRAIN)
    clock.advance(DRAIN - 1)
    assert statuses(job.run())[two] == "draining" and (root / two).is_dir()
    clock.advance(2)
    gone = job.run()
    assert statuses(gone) == {one: "unchanged", two: "removed"}
    assert names(root) == {one}
    clock.advance(10 * 365 * 86400)  # a member stays whatever the time
    assert statuses(job.run()) == {one: "unchanged"} and names(root) == {one}


def test_the_drain_counts_from_when_the_export_first_saw_a_name_gone(reg: Reg, tmp_path: Path
                                                                     ) -> None:
    """A clock ahead of the registry's, or an export that runs long after the version left,
    still keeps the folder a whole drain after it noticed; a name that comes back is kept."""
    _, v2 = start(reg, 1, 2)
    canary(reg, v2)
    root, clock = tmp_path / "loras", Clock()
    job = reg.exporter(root, clock)
    job.run()
    back(reg)
    clock.now = utcnow() + timedelta(seconds=DRAIN * 5)  # long after it left
    assert statuses(job.run())[reg.served(v2)] == "draining"
    canary(reg, v2)  # back before the drain ended: forgotten, and kept as a member
    assert statuses(job.run())[reg.served(v2)] == "unchanged"
    back(reg)
    clock.advance(1)
    assert statuses(job.run())[reg.served(v2)] == "draining"
    clock.advance(DRAIN)
    assert statuses(job.run())[reg.served(v2)] == "removed"


def test_a_folder_the_registry_no_longer_knows_drains_from_first_notice(reg: Reg,
                                                                         tmp_path: Path) -> None:
    """A deleted adapter's name is in neither the desired set nor its history."""
    start(reg, 1)
    root, clock = tmp_path / "loras", Clock()
    job = reg.exporter(root, clock)
    job.run()
    ghost = f"{reg.ns}~ghost~1~0123456789ab"
    (root / ghost).mkdir()
    (root / ghost / "adapter_config.json").write_text("{}")
    (root / ghost / SIDECAR).write_bytes(Sidecar(
        reg.pool, ghost, f"{reg.ns}/ghost@1", "0123456789ab" + "0" * 52, MODEL_ID, None,
        "0" * 64, "0" * 64).to_bytes())
    first = job.run()
    assert statuses(first)[ghost] == "draining" and first.draining[0].left_at is None
    clock.advance(DRAIN - 1)
    assert statuses(job.run())[ghost] == "draining"
    clock.advance(1)
    assert statuses(job.run())[ghost] == "removed" and not (root / ghost).exists()


def test_never_deletes_or_overwrites_folders_it_did_not_make(reg: Reg, tmp_path: Path) -> None:
    (v1,) = start(reg, 1)
    root, clock = tmp_path / "loras", Clock()
    root.mkdir()
    foreign = {
        "lab-adapter": None,  # not a served name at all
        f"{reg.ns}~other~1~0123456789ab": None,  # a served name, no sidecar
        f"{reg.ns}~copied~1~0123456789ab": "acme/other-pool",  # another pool's sidecar
    }
    for name, pool in foreign.items():
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text("{}")
        if pool:
            (root / name / SIDECAR).write_bytes(Sidecar(
                pool, name, "x/y@1", "0123456789ab" + "0" * 52, MODEL_ID, None, "0" * 64,
                "0" * 64).to_bytes())
    (root / "notes.txt").write_text("mine")
    before = {n: digests(root / n) for n in foreign}
    job = reg.exporter(root, clock)
    job.run()
    clock.advance(100 * DRAIN)
    job.run()
    assert names(root) == {*foreign, "notes.txt", reg.served(v1)}
    assert {n: digests(root / n) for n in foreign} == before

    squatter = tmp_path / "squatted"
    (squatter / reg.served(v1)).mkdir(parents=True)
    (squatter / reg.served(v1) / "adapter_config.json").write_text("{}")
    with pytest.raises(Conflict, match="lorareg export did not make it"):
        reg.exporter(squatter).run()
    assert digests(squatter / reg.served(v1)) == {
        "adapter_config.json": hashlib.sha256(b"{}").hexdigest()}


def test_a_served_name_never_maps_to_two_digests(reg: Reg, tmp_path: Path) -> None:
    """A folder holding the name with another manifest in its sidecar is refused loudly, and
    nothing at all is changed (not even the other members' downloads)."""
    v1, v2 = start(reg, 1, 2)
    canary(reg, v2)
    root = tmp_path / "loras"
    reg.exporter(root).run()
    one = root / reg.served(v1)
    sidecar = Sidecar.read(one)
    assert sidecar is not None
    (one / SIDECAR).chmod(0o644)
    (one / SIDECAR).write_bytes(Sidecar(**{
        **sidecar.__dict__, "manifest_digest": sidecar.manifest_digest[:12] + "f" * 52}
    ).to_bytes())
    two = root / reg.served(v2)
    (two / "adapter_model.safetensors").chmod(0o644)
    (two / "adapter_model.safetensors").unlink()  # would be repaired, if anything ran
    before = {n: digests(root / n) for n in names(root)}
    result = reg.cli("export", "--pool", reg.pool, "--dir", str(root))
    assert result.exit_code == 3, result.output
    assert "never maps to two digests" in result.stderr and sidecar.manifest_digest in (
        result.stderr)
    assert {n: digests(root / n) for n in names(root)} == before


def test_one_folder_belongs_to_one_pool(reg: Reg, tmp_path: Path) -> None:
    start(reg, 1)
    root = tmp_path / "loras"
    reg.exporter(root).run()
    reg.client.create_pool(f"{reg.ns}/gpu", base=BASE, model_id="/other", dtype="bfloat16")
    line = reg.cli("export", "--pool", f"{reg.ns}/gpu", "--dir", str(root))
    assert line.exit_code == 3 and f"holds the export of pool {reg.pool}" in line.stderr


# --------------------------------------------------------------------- damage and kills


def test_a_kill_mid_download_leaves_no_folder_where_an_engine_looks(reg: Reg, tmp_path: Path
                                                                    ) -> None:
    """The export process SIGKILLs itself once 1 MiB has arrived (inside the 3 MiB file);
    nothing under DIR is named like a served name, and the next run resumes the download
    (the files completed before the kill are kept) and completes the folder."""
    big = os.urandom(3 * 1024 * 1024)  # several chunks, so the kill lands mid-file
    number = reg.push(1, extra={"extra.bin": big})
    reg.client.promote(f"{reg.ns}/bot@{number}", "prod", now=True)
    reg.client.bind_pool(reg.pool, f"{reg.ns}/bot:prod")
    root = tmp_path / "loras"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from registry.client import Client\n"
        "from registry.serving.export import PoolExport\n"
        "seen = [0]\n"
        "def die(n):\n"
        "    seen[0] += n\n"
        "    if seen[0] > 1024 * 1024:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "with Client(sys.argv[1], sys.argv[2]) as c:\n"
        "    PoolExport(c, sys.argv[3], Path(sys.argv[4]), progress=die).run()\n")
    proc = subprocess.run([sys.executable, "-c", script, reg.server.url,
                           str(reg.server.admin_token), reg.pool, str(root)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert names(root) == set()
    partial = list((root / STORE / ".incoming").iterdir())
    assert [p.name.split(".partial-")[0] for p in partial] == [f".{reg.served(number)}"]

    done = reg.exporter(root).run()
    assert statuses(done) == {reg.served(number): "exported"}
    assert 0 < done.downloaded_bytes <= len(big)  # resumed: the files before it were kept
    assert hashlib.sha256((root / reg.served(number) / "extra.bin").read_bytes()).digest() == (
        hashlib.sha256(big).digest())
    assert list((root / STORE / ".incoming").iterdir()) == []


def test_damage_is_repaired_in_place_and_a_new_model_id_rewrites_the_config(
        reg: Reg, tmp_path: Path) -> None:
    (v1,) = start(reg, 1)
    root = tmp_path / "loras"
    reg.exporter(root).run()
    folder = root / reg.served(v1)
    good = digests(folder)
    weights = folder / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size: only --verify sees it
    weights.write_bytes(bytes(data))
    assert statuses(reg.exporter(root).run()) == {folder.name: "unchanged"}
    assert statuses(reg.exporter(root, verify=True).run()) == {folder.name: "repaired"}
    assert digests(folder) == good

    reg.client.update_pool(reg.pool, model_id="/mnt/models/tiny-llama")
    assert statuses(reg.exporter(root).run()) == {folder.name: "repaired"}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/mnt/models/tiny-llama"
    sidecar = Sidecar.read(folder)
    assert sidecar is not None and sidecar.model_id == "/mnt/models/tiny-llama"
    assert sidecar.original_base_model_name_or_path == "tiny/llama"


# ------------------------------------------------------------------------ the CLI's edges


def test_bad_invocations_and_other_tenants_change_nothing(reg: Reg, tmp_path: Path) -> None:
    start(reg, 1)
    root = tmp_path / "loras"
    for args in (["export", "--dir", str(root)],
                 ["export", reg.ns, "--pool", reg.pool, "--dir", str(root)],
                 ["export", reg.ns, "-c", "prod", "--dir", str(root), "--vllm-url", "http://x"],
                 ["export", "--pool", reg.pool, "--dir", str(root), "--drain", "1m"]):
        assert reg.cli(*args).exit_code == 1, args
    bad = reg.cli("export", "--pool", "Not A Pool", "--dir", str(root))
    assert bad.exit_code == 4 and "Traceback" not in bad.output
    assert reg.cli("export", "--pool", f"{reg.ns}/none", "--dir", str(root)).exit_code == 2
    outsider = reg.client.create_token("outsider", "admin", namespace="elsewhere").token
    denied = reg.cli("export", "--pool", reg.pool, "--dir", str(root), token=outsider)
    assert denied.exit_code == 5, denied.output
    assert not root.exists() or names(root) == set()
    with Client(reg.server.url, outsider) as other, pytest.raises(PermissionDenied):
        PoolExport(other, reg.pool, root).run()
    assert names(root) == set()


def test_an_unreachable_engine_exits_6_and_deletes_nothing(reg: Reg, tmp_path: Path) -> None:
    v1, v2 = start(reg, 1, 2)
    canary(reg, v2)
    root = tmp_path / "loras"
    reg.exporter(root).run()
    back(reg)
    reg.client.update_pool(reg.pool, drain_seconds=0)
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    result = reg.cli("export", "--pool", reg.pool, "--dir", str(root), "--vllm-url", dead)
    assert result.exit_code == 6, result.output
    assert "cannot reach the engine at http://127.0.0.1:9" in result.stderr
    assert names(root) == {reg.served(v1), reg.served(v2)}  # v2 may still be loaded there


def test_watch_exports_again_every_interval_until_interrupted(reg: Reg, tmp_path: Path
                                                                ) -> None:
    """``--watch``: a round per interval picks up a change without a restart; Ctrl-C ends it
    with the documented exit code."""
    (v1,) = start(reg, 1)
    root = tmp_path / "loras"
    env = {**base_env(), **reg.server.env}
    proc = subprocess.Popen([str(BIN / "lorareg"), "export", "--pool", reg.pool, "--dir",
                             str(root), "--watch", "1s"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"{reg.served(v1)}  exported")
        v2 = reg.push(2)
        reg.client.promote(f"{reg.ns}/bot@{v2}", "prod", now=True)
        while not (line := proc.stdout.readline()).startswith(reg.served(v2)):
            assert line, proc.stderr.read() if proc.stderr else ""
        assert line.startswith(f"{reg.served(v2)}  exported")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Aborted!" in err, err  # exit 1: interrupted
    assert names(root) == {reg.served(v1), reg.served(v2)}


# ------------------------------------------------------------- the runtime driver, faked


def fake_engine(handler: Callable[[httpx.Request], httpx.Response]) -> VllmRuntime:
    return VllmRuntime("http://vllm.test", transport=httpx.MockTransport(handler))


def test_the_driver_reports_the_engines_own_refusal_text() -> None:
    text = ("Call to add_lora method failed: Worker failed with error 'LoRA rank 32 is "
            "greater than max_lora_rank 16.', please check the stack trace above")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [
                {"id": "tiny", "root": "/m", "parent": None},
                {"id": "a~b~1~0123456789ab", "root": "/d/a~b~1~0123456789ab", "parent": "tiny"}]})
        if request.url.path == "/v1/unload_lora_adapter":
            return httpx.Response(404, json={"error": {"message": "cannot be found"}})
        return httpx.Response(500, json={"error": {"message": text, "code": 500}})

    with fake_engine(handler) as engine:
        assert list(engine.adapters()) == ["a~b~1~0123456789ab"]
        with pytest.raises(EngineRefused) as refused:
            engine.load("a~b~2~0123456789ab", "/d/a~b~2~0123456789ab")
        assert refused.value.extra["engine_message"] == text and refused.value.exit_code == 4
        assert engine.unload("a~b~9~0123456789ab") is False
    with fake_engine(lambda r: httpx.Response(200, text="<html>not vllm</html>")) as other, \
            pytest.raises(EngineUnavailable) as wrong:
        other.adapters()
    assert wrong.value.exit_code == 6


def test_a_refused_unload_keeps_the_folder(reg: Reg, tmp_path: Path) -> None:
    """Runtime mode unloads before deleting; if the engine refuses the unload, the folder
    stays (the engine may still read it) and the refusal is reported."""
    v1, v2 = start(reg, 1, 2)
    canary(reg, v2)
    root = tmp_path / "loras"
    loaded: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [
                {"id": n, "root": p, "parent": "tiny"} for n, p in loaded.items()]})
        if request.url.path == "/v1/load_lora_adapter":
            loaded[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="Success")
        return httpx.Response(500, json={"error": {"message": "engine busy"}})

    with fake_engine(handler) as engine:
        clock = Clock()
        job = reg.exporter(root, clock, engine=engine)
        first = job.run()
        assert first.engine is not None
        assert sorted(first.engine.loaded) == sorted([reg.served(v1), reg.served(v2)])
        assert loaded[reg.served(v2)] == str(root.resolve() / reg.served(v2))
        back(reg)
        clock.now = utcnow() + timedelta(seconds=DRAIN + 1)
        job.run()
        clock.advance(DRAIN + 1)
        late = job.run()
    assert late.engine is not None and late.engine.refused == {reg.served(v2): "engine busy"}
    assert statuses(late)[reg.served(v2)] == "draining" and (root / reg.served(v2)).is_dir()
    assert parse_served_name(reg.served(v2))[2] == v2
