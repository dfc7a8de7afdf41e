"""Statuses are enums defined once (registry/statuses.py): no status string literal is compared,
assigned or listed anywhere else in registry/, cli/ or merge_worker/, nor compared in a
template. Read from the source (AST for Python, a pattern for Jinja), nothing imported.

What counts as a use of a status literal (e.g. ``"yanked"``, ``"succeeded"``):
  * a comparison: ``x.status == "yanked"``, ``status in ("queued", "running")``;
  * a status field set: ``job.status = "failed"``, ``status="aborted"``, ``{"status": ...}``;
  * a collection literal holding two or more values of one family (a hand-made set of
    statuses, a ``click.Choice`` of them, a dict keyed by them).
Free text that happens to contain such a word (``verb = "yanked"``, a docstring) does not.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from registry import statuses

ROOT = Path(__file__).resolve().parents[1]
DEFINED_IN = ROOT / "registry/statuses.py"
#: Every StrEnum the module defines: a family added there is checked without a change here.
FAMILIES: list[type[StrEnum]] = [
    v for v in vars(statuses).values()
    if isinstance(v, type) and issubclass(v, StrEnum) and v.__module__ == statuses.__name__]
STATUS_FIELDS = {"status", "compat_status", "verdict", "paused_by", "latest_status"}
#: Collections whose members are not statuses though they share words with them:
#: (file, assigned name) -> why.
NOT_STATUSES = {
    ("registry/ui/rendering.py", "NOTICES"):
        "the codes of ?done= notices after a UI action (aborted, paused, yanked, ...)",
    ("registry/ui/actions.py", "CONTROL_DONE"): "the notice code each rollout control ends with",
}
TEMPLATE_COMPARE = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*['"](?P<word>[a-z_]+)['"]""")


def values() -> dict[str, set[str]]:
    """status value -> the families it belongs to."""
    out: dict[str, set[str]] = {}
    for family in FAMILIES:
        for member in family:
            out.setdefault(member.value, set()).add(family.__name__)
    return out


VALUES = values()


def python_sources() -> Iterator[Path]:
    for room in ("registry", "cli", "merge_worker"):
        for path in sorted((ROOT / room).rglob("*.py")):
            if path != DEFINED_IN:
                yield path


def literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VALUES:
        return node.value
    return None


def literals_in(node: ast.AST) -> list[str]:
    """The status literals of ``node`` itself or of a tuple/list/set literal it is."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for elt in node.elts if (v := literal(elt))]
    found = literal(node)
    return [found] if found else []


def one_family_collection(items: list[ast.expr | None]) -> list[str]:
    found = [v for item in items if item is not None and (v := literal(item))]
    families = [VALUES[v] for v in found]
    shared = set.intersection(*families) if families else set()
    return found if len(found) >= 2 and shared else []


def field_name(target: ast.AST) -> str | None:
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Name):
        return target.id
    return None


def assigned_name(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return next((n for t in targets if (n := field_name(t))), None)
    return None


def uses(tree: ast.Module, rel: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line, what, literals) for every use of a status literal in one module."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        found: list[str] = []
        what = ""
        if isinstance(node, ast.Compare):
            found = [v for side in [node.left, *node.comparators] for v in literals_in(side)]
            what = "compared"
        elif isinstance(node, ast.Assign):
            fields = [field_name(t) for t in node.targets]
            if isinstance(node.targets[0], ast.Tuple):
                fields = [field_name(e) for e in node.targets[0].elts]
                pairs = zip(fields, node.value.elts, strict=False) if isinstance(
                    node.value, ast.Tuple) else []
                found = [v for name, value in pairs if name in STATUS_FIELDS
                         for v in literals_in(value)]
            elif any(f in STATUS_FIELDS for f in fields):
                found = literals_in(node.value)
            what = "assigned to a status"
        elif isinstance(node, ast.keyword) and node.arg in STATUS_FIELDS:
            found, what = literals_in(node.value), "passed as a status"
        elif isinstance(node, ast.Dict):
            found = [v for k, value in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant) and k.value in STATUS_FIELDS
                     for v in literals_in(value)] + one_family_collection(list(node.keys))
            what = "a status in a dict"
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            found, what = one_family_collection(list(node.elts)), "a hand-made set of statuses"
        if found and (rel, assigned_name(node, parents)) not in NOT_STATUSES:
            yield node.lineno, what, found


def python_offenders() -> list[str]:
    out = []
    for path in python_sources():
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), filename=rel)
        out += [f"{rel}:{line}: {what}: {found}" for line, what, found in uses(tree, rel)]
    return sorted(set(out))


def template_offenders() -> list[str]:
    out = []
    for path in sorted((ROOT / "registry/ui/templates").rglob("*.html")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in TEMPLATE_COMPARE.finditer(line):
                if match["word"] in VALUES:
                    out.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    return out


def test_no_status_literal_outside_the_enums() -> None:
    found = python_offenders()
    assert not found, "use the enums of registry/statuses.py:\n" + "\n".join(found)


def test_templates_compare_statuses_with_the_enums() -> None:
    found = template_offenders()
    assert not found, "use the enums (Jinja globals) in templates:\n" + "\n".join(found)


def test_the_exceptions_still_exist() -> None:
    for rel, name in NOT_STATUSES:
        assert re.search(rf"^{name}\b", (ROOT / rel).read_text(), re.M), (rel, name)


def test_the_check_sees_what_it_looks_for() -> None:
    sample = ast.parse(
        'if v.status == "yanked": pass\n'
        'job.status, job.error = "failed", "boom"\n'
        'f(status="aborted")\n'
        'DONE = frozenset({"succeeded", "failed", "cancelled"})\n'
        'x = {"status": "queued"}\n'
        'y = {"progressing": "baking", "paused": "held"}.get(s)\n'
        'ok = status in ("active", "yanked")\n'
        'verb = "yanked"\n'
        '"""a docstring saying pending and dead"""\n'
        'pair = ("active", "ok")\n')
    lines = sorted({line for line, _, _ in uses(sample, "sample.py")})
    assert lines == [1, 2, 3, 4, 5, 6, 7], lines
    assert TEMPLATE_COMPARE.search("{% if v.status == 'yanked' %}")
    assert TEMPLATE_COMPARE.search("{% if j.status in ('queued', 'running') %}")


def test_every_family_is_found() -> None:
    assert {f.__name__ for f in FAMILIES} >= {
        "VersionStatus", "CompatStatus", "JobStatus", "RolloutStatus", "PausedBy",
        "GateVerdict", "DeliveryStatus"}


def test_members_are_their_stored_strings() -> None:
    """What makes the enums a drop-in for the stored strings: equal, hashed and formatted as
    them, so rows, JSON, f-strings and dict keys need no conversion."""
    assert statuses.VersionStatus.YANKED == "yanked"
    assert f"job.{statuses.JobStatus.SUCCEEDED}" == "job.succeeded"
    assert {"queued": 1}[statuses.JobStatus.QUEUED] == 1
    for family in FAMILIES:
        assert all(member.value == str(member) for member in family)
