"""``lorareg push`` refuses names some system cannot materialize before contacting anyone, with
the server's own check (registry.manifest.check_portable); ``lorareg ls``/``show`` survive a
version whose stored config no release should have kept (issue 15, items 3 and 7)."""

from __future__ import annotations

import json
import socket
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from cli.main import main
from registry.db import make_engine
from tests.cli.conftest import BASE
from tests.fixtures.adapters import adapter_files
from tests.fixtures.server import LiveServer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _adapter_folder(root: Path, extra: dict[str, bytes]) -> Path:
    for rel, data in {**adapter_files(), **extra}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


UNPORTABLE_FOLDERS = {
    "case": ({"README.md": b"a", "readme.md": b"b"}, "differ only by case"),
    "NFD": ({unicodedata.normalize("NFD", "caf\u00e9.txt"): b"c"}, "not in Unicode NFC form"),
    "zero-width": ({"read\u200bme.md": b"z"}, "U+200B"),
    "bidi override": ({"evil\u202etxt.exe": b"e"}, "U+202E"),
    "NEL": ({"a\u0085b.txt": b"n"}, "U+0085"),
    "device name": ({"nul.txt": b"d"}, "reserves for a device"),
    "trailing dot": ({"notes.": b"t"}, "ending in a dot or space"),
    "path over 512 bytes": ({"/".join(["\u00e9" * 100] * 3): b"p"}, "longer than 512 bytes"),
    "not UTF-8": ({"caf\udce9.txt": b"u"}, "U+DCE9"),  # the name os.walk gives b"caf\xe9.txt"
}


@pytest.mark.parametrize("case", UNPORTABLE_FOLDERS)
def test_push_refuses_unportable_names_locally_exit_4(tmp_path: Path, case: str) -> None:
    extra, reason = UNPORTABLE_FOLDERS[case]
    folder = _adapter_folder(tmp_path / "adapter", extra)
    # Nothing listens there: a client that asked the server anything would exit 6.
    env = {"LORAREG_URL": f"http://127.0.0.1:{_closed_port()}", "LORAREG_TOKEN": "lrg_a_b",
           "LORAREG_CONFIG": str(tmp_path / "cli.json"), "LORAREG_RETRIES": "0"}
    result = CliRunner().invoke(main, ["push", str(folder), "--adapter", "acme/bot",
                                       "--base", BASE], env=env)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert reason in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_ls_and_show_survive_a_bad_stored_config(
    live_server: LiveServer, fresh_db_url: str, tmp_path: Path
) -> None:
    env = {"LORAREG_URL": live_server.url, "LORAREG_TOKEN": live_server.admin_token,
           "LORAREG_CONFIG": str(tmp_path / "cli.json")}

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    for seed in (1, 2):
        folder = tmp_path / f"adapter{seed}"
        folder.mkdir()
        for rel, data in adapter_files(seed=seed).items():
            (folder / rel).write_bytes(data)
        pushed = run("push", str(folder), "--adapter", "acme/bot", "--base", BASE)
        assert pushed.exit_code == 0, pushed.stderr
    engine = make_engine(fresh_db_url)
    with engine.begin() as conn:  # what a release without the checks stored
        conn.execute(text("UPDATE adapter_versions SET peft_config = CAST(:v AS json) "
                          "WHERE number = 2"), {"v": '{"x": ' + "[" * 5000 + "]" * 5000 + "}"})
    engine.dispose()
    for args in (["ls"], ["ls", "acme/bot"], ["show", "acme/bot@2"], ["show", "acme/bot"],
                 ["ls", "--status", "active"]):
        result = run(*args)
        assert result.exit_code == 0, (args, result.stderr)
    listed = json.loads(run("--json", "ls", "acme/bot").stdout)
    assert [v["peft_config"] is None for v in listed] == [True, False]
    assert "nested deeper than 32 levels" in listed[0]["peft_config_error"]
