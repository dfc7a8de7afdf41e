"""``lorareg base register|ls|show`` and ``lorareg verify`` against one real uvicorn server per
module, with tiny real models; Hugging Face cache registration as a real subprocess (the
``HF_HOME`` it reads is fixed when huggingface_hub is imported)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry import errors
from registry.client import Client
from registry.client import _hf_cache as hf_cache
from registry.config import get_settings
from registry.fingerprint import fingerprint_dir
from tests.cli.helpers import changed_copy, run_all, uvicorn_server
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer

REV = "0123456789abcdef0123456789abcdef01234567"
COMMIT = "0a1b2c3d" * 5
Run = Callable[..., Result]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
           ) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("bases-cli")
    db = root / "lorareg.db"
    db.write_bytes(sqlite_template.read_bytes())
    with uvicorn_server(root, f"sqlite:///{db}", f"file://{root / 'blobs'}") as live:
        yield live


@pytest.fixture
def cli(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """The CLI in-process, with the admin token and a fingerprint cache of this test's own."""
    monkeypatch.setenv("LORAREG_FINGERPRINT_CACHE", str(tmp_path / "fingerprints.sqlite"))
    get_settings.cache_clear()
    env = {"LORAREG_URL": server.url, "LORAREG_TOKEN": server.admin_token,
           "LORAREG_CONFIG": str(tmp_path / "cli.json")}

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    yield run
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def llama(tiny_models: TinyModels) -> Path:
    return tiny_models.base("llama")


@pytest.fixture(scope="module")
def llama_fp(llama: Path) -> str:
    return fingerprint_dir(llama).digest


def _json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def _one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _register(cli: Run, folder: Path, hub_id: str, *extra: str) -> dict[str, object]:
    return _json(cli("--json", "base", "register", str(folder), "--name", hub_id,
                     "--revision", REV, *extra))


def _push(cli: Run, adapter: Path, name: str, base: str) -> Result:
    return cli("--json", "push", str(adapter), "--adapter", name, "--base", base)


def test_registering_the_same_weights_twice_returns_the_same_base(
    cli: Run, llama: Path, llama_fp: str
) -> None:
    first = _register(cli, llama, "tiny/llama")
    second = _register(cli, llama, "tiny/llama", "--no-cache")
    assert first["id"] == second["id"] and second["created"] is False
    assert first["fingerprint"] == second["fingerprint"] == llama_fp
    assert first["revision"] == REV and first["files"] == []  # nothing uploaded

    listed = json.loads(cli("--json", "base", "ls", "--name", "tiny/llama").stdout)
    assert [b["id"] for b in listed] == [first["id"]]
    shown = cli("base", "show", str(first["id"]))
    assert shown.exit_code == 0 and llama_fp in shown.stdout
    human = cli("base", "register", str(llama), "--name", "tiny/llama", "--revision", REV)
    assert human.stdout.startswith(f"already registered: base {first['id']} tiny/llama@{REV}")


def test_adapter_on_a_registered_base_is_verified_and_verify_passes(
    cli: Run, llama: Path, llama_fp: str, tiny_models: TinyModels
) -> None:
    _register(cli, llama, "tiny/llama")
    adapter = tiny_models.adapter(llama, r=4, target_modules=["q_proj", "v_proj"])
    pushed = _json(_push(cli, adapter, "acme/llama-bot", f"tiny/llama@{REV}"))
    assert pushed["base"] == {"hub_id": "tiny/llama", "revision": REV,
                              "fingerprint": llama_fp, "compat_status": "verified"}

    ok = cli("verify", "acme/llama-bot@1", "--base-path", str(llama))
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.startswith(f"compatible: fingerprint {llama_fp} (acme/llama-bot@1 on ")
    as_json = _json(cli("--json", "verify", "acme/llama-bot@1", "--base-path", str(llama)))
    assert as_json["compatible"] is True and as_json["fingerprint"] == llama_fp


def test_verify_against_a_changed_tensor_exits_4_naming_both_fingerprints_and_the_tensor(
    cli: Run, llama: Path, llama_fp: str, tiny_models: TinyModels, tmp_path: Path
) -> None:
    _register(cli, llama, "tiny/llama")
    adapter = tiny_models.adapter(llama, r=4, target_modules=["q_proj", "v_proj"])
    ref = str(_json(_push(cli, adapter, "acme/llama-bot", f"tiny/llama@{REV}"))["ref"])
    bad = tmp_path / "bad-base"
    tensor = changed_copy(llama, bad)
    before = {p.name: p.stat().st_mtime_ns for p in bad.iterdir()}

    line = _one_error_line(cli("verify", ref, "--base-path", str(bad), "--no-cache"), 4)
    assert llama_fp in line and fingerprint_dir(bad).digest in line
    assert f"tensor '{tensor}' has different bytes" in line and REV in line
    # verify writes nothing: not the folder, and with --no-cache not the fingerprint cache
    assert {p.name: p.stat().st_mtime_ns for p in bad.iterdir()} == before
    with sqlite3.connect(tmp_path / "fingerprints.sqlite") as db:
        cached = [path for (path,) in db.execute("SELECT path FROM file_entries_v1")]
    assert cached and not [p for p in cached if p.startswith(str(bad))]


def test_verify_of_a_version_on_an_unregistered_base_exits_4(
    cli: Run, llama: Path, tiny_models: TinyModels
) -> None:
    adapter = tiny_models.adapter(llama, r=4, target_modules=["q_proj", "v_proj"])
    pushed = _json(_push(cli, adapter, "acme/loose-bot", f"other/unregistered@{REV}"))
    assert pushed["base"]["compat_status"] == "unverified"  # type: ignore[index]
    line = _one_error_line(cli("verify", "acme/loose-bot@1", "--base-path", str(llama)), 4)
    assert "other/unregistered" in line and "not registered" in line


def test_push_that_does_not_fit_the_registered_base_exits_4_listing_mismatches(
    cli: Run, llama: Path, tiny_models: TinyModels
) -> None:
    _register(cli, llama, "tiny/llama")
    wide = tiny_models.base("llama", hidden_size=48, intermediate_size=96)
    adapter = tiny_models.adapter(wide, r=4, target_modules=["q_proj", "v_proj"])
    line = _one_error_line(cli("push", str(adapter), "--adapter", "acme/wide-bot",
                               "--base", f"tiny/llama@{REV}"), 4)
    assert "does not fit this base" in line and "mismatch(es)" in line
    assert "model.layers.0.self_attn.q_proj.weight: base shape [32, 32]" in line
    _one_error_line(cli("show", "acme/wide-bot"), 2)  # nothing was created


def test_gpt2_conv1d_adapter_is_verified_against_its_base(
    cli: Run, tiny_models: TinyModels
) -> None:
    gpt2 = tiny_models.base("gpt2")
    registered = _register(cli, gpt2, "tiny/gpt2")
    adapter = tiny_models.adapter(gpt2, r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    pushed = _json(_push(cli, adapter, "acme/gpt2-bot", f"tiny/gpt2@{REV}"))
    assert pushed["base"]["compat_status"] == "verified"  # type: ignore[index]
    ok = cli("verify", "acme/gpt2-bot@1", "--base-path", str(gpt2))
    assert ok.exit_code == 0 and str(registered["fingerprint"]) in ok.stdout


# ----------------------------------------------------------------------- Hugging Face cache


def fake_hf_cache(hf_home: Path, repo_id: str, model: Path, commit: str) -> Path:
    """The layout huggingface_hub downloads into: LFS files under their sha256, git files under
    git's blob SHA-1, snapshot files as relative symlinks, ``refs/main`` naming the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in sorted(model.iterdir()):
        data = file.read_bytes()
        if file.suffix == ".safetensors":
            name = hashlib.sha256(data).hexdigest()
        else:
            name = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324
        (repo / "blobs" / name).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _hf_env(server: LiveServer, hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in server.env.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def test_hf_cache_registration_records_the_commit_and_refuses_a_corrupt_blob(
    server: LiveServer, llama: Path, llama_fp: str, tmp_path: Path
) -> None:
    good, bad = tmp_path / "hf-good", tmp_path / "hf-bad"
    fake_hf_cache(good, "org/tiny-llama", llama, COMMIT)
    snapshot = fake_hf_cache(bad, "org/tiny-llama", llama, COMMIT)
    damaged = snapshot / "model-00002-of-00004.safetensors"
    blob = damaged.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern off: only hashing notices
    blob.write_bytes(bytes(data))

    ok, corrupt, absent = run_all([
        (_hf_env(server, good), ["--json", "base", "register", "--hf-cache",
                                 "org/tiny-llama@main", "--upload"]),
        (_hf_env(server, bad), ["base", "register", "--hf-cache", "org/tiny-llama@main"]),
        (_hf_env(server, good), ["base", "register", "--hf-cache", "org/absent@main"]),
    ])
    base = ok.json()
    assert (base["hub_id"], base["revision"], base["fingerprint"]) == (
        "org/tiny-llama", COMMIT, llama_fp)
    uploaded = {f["path"]: f["digest"] for f in base["files"]}
    assert uploaded.keys() == {p.name for p in llama.iterdir()}
    assert uploaded["model-00001-of-00004.safetensors"] == hashlib.sha256(
        (llama / "model-00001-of-00004.safetensors").read_bytes()).hexdigest()

    line = corrupt.error_line(4)
    assert "model-00002-of-00004.safetensors" in line and "corrupt" in line
    assert "org/absent@main is not (completely) in the Hugging Face cache" in absent.error_line(2)


def test_register_usage_errors_exit_1(cli: Run, llama: Path) -> None:
    for args in (["base", "register"], ["base", "register", str(llama), "--name", "x/y"],
                 ["base", "register", str(llama), "--hf-cache", "org/x@main"],
                 ["base", "show", "zero"], ["verify", "acme/x@1"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ pure pieces


def test_hf_spec_parsing_and_snapshot_commit(tmp_path: Path) -> None:
    assert hf_cache.parse_spec("org/name@v1.0") == ("org/name", "v1.0")
    assert hf_cache.parse_spec("org/name") == ("org/name", "main")
    for bad in ("org/name@", "@main", ""):
        with pytest.raises(errors.BadRequest, match="ORG/NAME@REVISION"):
            hf_cache.parse_spec(bad)
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / COMMIT
    assert hf_cache.snapshot_commit(snapshot) == COMMIT
    assert hf_cache.snapshot_commit(tmp_path / "plain" / COMMIT) is None


class FakeBar:
    """The tqdm methods the client uses, recording each phase."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.n = 0.0
        self.desc = ""

    def set_description_str(self, desc: str) -> None:
        self.desc = desc

    def reset(self, total: float | None = None) -> None:
        self.phases.append((self.desc, total or 0))
        self.n = 0

    def update(self, n: float | None = 1) -> bool | None:
        self.n += n or 0
        return None


def test_register_reports_every_phase_to_a_progress_bar(
    server: LiveServer, llama: Path, tmp_path: Path
) -> None:
    bar = FakeBar()
    with Client(server.url, server.admin_token,
                fingerprint_cache_path=tmp_path / "fingerprints.sqlite") as client:
        base = client.register_base(llama, "tiny/llama-phases", REV, upload=True, progress=bar)
    folder_bytes = sum(p.stat().st_size for p in llama.iterdir())
    assert [name for name, _ in bar.phases] == ["fingerprint", "hash", "upload"]
    assert bar.phases[0][1] == base.total_bytes and bar.phases[1][1] == folder_bytes
    assert bar.n == bar.phases[2][1] == base.uploaded_bytes
    assert {f.path for f in base.files} == {p.name for p in llama.iterdir()}
