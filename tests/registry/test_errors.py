"""The error tree is the one source of problem codes and exit codes (registry/errors.py): its
docstring draws the real tree, every exit code has a meaning and a class, and the README's
exit-code table says what ``EXIT_CODES`` says."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from registry import errors
from registry.errors import EXIT_CODES, RegistryError

README = Path(__file__).resolve().parents[2] / "README.md"


def docstring_tree() -> str:
    doc = errors.__doc__ or ""
    block = doc.split("Hierarchy", 1)[1].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:  # the blank line after "::"
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n")


def test_the_docstring_draws_the_real_tree() -> None:
    assert docstring_tree() == errors.tree()


def test_codes_are_unique_and_classes_complete() -> None:
    classes = errors.classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), cls
        assert cls.title and 400 <= cls.status_code <= 599, cls
        assert cls.exit_code in EXIT_CODES and cls.exit_code != 0, cls
    for new in ("method_not_allowed", "range_not_satisfiable", "gate_failed", "usage_error"):
        assert new in codes


def test_every_exit_code_has_a_class_and_a_meaning() -> None:
    declared = {cls.exit_code for cls in errors.classes()}
    assert declared == set(EXIT_CODES) - {0}
    assert list(EXIT_CODES) == sorted(EXIT_CODES)
    assert (errors.UsageError.exit_code, errors.GateFailed.exit_code) == (1, 7)


def readme_exit_codes() -> dict[int, str]:
    text = README.read_text()
    section = text.split("\nExit codes:\n", 1)[1]
    table = {}
    for line in section.lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0].isdigit():
            table[int(cells[0])] = cells[1]
    return table


def test_the_readme_table_is_the_tree_s() -> None:
    assert readme_exit_codes() == EXIT_CODES


@pytest.mark.parametrize("cls", errors.classes(), ids=lambda cls: cls.code)
def test_a_problem_document_rebuilds_its_class(cls: type[RegistryError]) -> None:
    problem = cls("it went wrong", helpful=1).to_problem()
    assert problem["type"] == f"https://lorareg.dev/problems/{cls.code}"
    again = errors.from_problem(problem, cls.status_code)
    assert type(again) is cls
    assert (again.detail, again.extra) == ("it went wrong", {"helpful": 1})


@pytest.mark.parametrize(("status", "cls"), [
    (400, errors.BadRequest), (401, errors.Unauthenticated), (403, errors.PermissionDenied),
    (404, errors.NotFound), (405, errors.MethodNotAllowed), (408, errors.RequestTimeout),
    (409, errors.Conflict), (412, errors.PreconditionFailed), (413, errors.PayloadTooLarge),
    (416, errors.RangeNotSatisfiable), (422, errors.ValidationFailed),
    (429, errors.TooManyRequests), (418, errors.BadRequest), (500, errors.RegistryError),
    (502, errors.RegistryError), (503, errors.RegistryError),
])
def test_a_status_without_a_known_code_gets_its_class(status: int,
                                                      cls: type[RegistryError]) -> None:
    assert errors.for_status(status) is cls
    assert type(errors.from_problem({"code": "from_a_newer_server"}, status)) is cls
