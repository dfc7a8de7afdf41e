"""The CI examples are valid YAML and use only lorareg commands and flags that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.server import BIN

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "ci").glob("*.yml"))
GLOBAL_FLAGS = {"--json", "--quiet", "-q"}


def scripts(doc: object) -> list[str]:
    """Every shell line of the pipeline: GitHub ``run:`` blocks and GitLab ``script:`` items,
    with backslash continuations joined."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("run", "script", "before_script"):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    found += re.sub(r"\\\n\s*", " ", str(item)).splitlines()
            else:
                found += scripts(value)
    elif isinstance(doc, list):
        for item in doc:
            found += scripts(item)
    return found


def invocations(lines: list[str]) -> list[tuple[list[str], set[str]]]:
    """``lorareg [--json] CMD [SUB]`` with the flags used after it."""
    out = []
    for line in lines:
        m = re.search(r"lorareg((?:\s+--json|\s+--quiet)*)\s+([a-z]+)(?:\s+([a-z]+))?(.*)", line)
        if m:
            words = [w for w in (m.group(2), m.group(3)) if w]
            out.append((words, set(re.findall(r"(--[a-z][a-z-]*)", m.group(4))) - GLOBAL_FLAGS))
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_yaml_and_use_real_commands(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    used = invocations(scripts(doc))
    assert {words[0] for words, _ in used} >= {"push", "gate", "promote", "wait"}
    for words, flags in used:
        help_run = subprocess.run([str(BIN / "lorareg"), *words, "--help"], capture_output=True,
                                  text=True, check=False)
        if help_run.returncode != 0 and len(words) > 1:  # the 2nd word was an argument
            words = words[:1]
            help_run = subprocess.run([str(BIN / "lorareg"), *words, "--help"],
                                      capture_output=True, text=True, check=False)
        assert help_run.returncode == 0, (words, help_run.stderr)
        for flag in flags:
            assert flag in help_run.stdout, f"{path.name}: lorareg {words[0]} has no {flag}"
