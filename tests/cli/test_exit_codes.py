"""``lorareg --help`` shows the exit codes the error tree declares, and click's usage errors are
UsageErrors: one line on stderr and exit 1 (click's own would be several lines and exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import pipeline
from cli.main import main
from registry.errors import EXIT_CODES, GateFailed, UsageError


def help_exit_codes(text: str) -> dict[int, str]:
    lines = text.split("Exit codes:\n", 1)[1].splitlines()
    table = {}
    for line in lines:
        code, _, meaning = line.strip().partition("  ")
        if not code.isdigit():
            break
        table[int(code)] = meaning
    return table


def test_help_shows_the_tree_s_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    shown = help_exit_codes(result.stdout)
    assert shown == {code: meaning.replace("`", "'") for code, meaning in EXIT_CODES.items()}
    assert shown[7] == "a 'lorareg gate' requirement is not met"


def test_gate_exits_with_gate_failed_s_code() -> None:
    assert pipeline.GATE_FAILED == GateFailed.exit_code == 7


@pytest.mark.parametrize(("args", "says"), [
    (["--bogus"], "No such option '--bogus'. See 'lorareg --help'."),
    (["nope"], "No such command 'nope'. See 'lorareg --help'."),
    (["ls", "--limit", "0"], "See 'lorareg ls --help'."),
    (["push"], "Missing argument 'FOLDER'. See 'lorareg push --help'."),
    (["gate", "acme/bot@1"], "Missing option '--require'. See 'lorareg gate --help'."),
])
def test_usage_errors_are_one_line_and_exit_1(tmp_path: Path, args: list[str], says: str
                                              ) -> None:
    env = {"LORAREG_URL": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    result = CliRunner().invoke(main, args, env=env, prog_name="lorareg")
    assert result.exit_code == UsageError.exit_code == 1, result.output
    assert result.stdout == ""
    line, end, rest = result.stderr.partition("\n")
    assert (end, rest) == ("\n", "") and line.startswith("error: ") and says in line, line


def test_a_usage_error_in_a_real_process(tmp_path: Path) -> None:
    """What a shell sees: one line on stderr, nothing on stdout, exit 1, nothing contacted."""
    env = {"LORAREG_URL": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "lorareg"), "ls", "--zzz"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: No such option '--zzz'. See 'lorareg ls --help'.\n"
