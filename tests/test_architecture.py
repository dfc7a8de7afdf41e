"""The house rules of docs/architecture.md, checked on the source (AST, nothing imported):
which way imports run between the rooms, and that routers and pages run no queries and write
no audit rows themselves.

An import counts wherever it is written (module level, inside a function, under
``TYPE_CHECKING``): a lazy or type-only import is still an arrow. Importing model classes in a
router or a page (for a type hint or ``isinstance``) is allowed; building or running a query
is not, and neither is any ``sqlalchemy`` import beyond the type names in ``SQL_TYPES`` and
the exception classes of ``sqlalchemy.exc`` (to translate a driver's error).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_FRAMEWORKS = ("fastapi", "starlette", "jinja2", "markupsafe", "uvicorn")
#: The one module of registry.api that may import registry.ui: it assembles the app.
ASSEMBLER = "registry.api.app"
#: Arrows from the web context to registry.api that are allowed until the module moves:
#: (importer, imported) -> why. An entry that no longer exists fails the test (remove it).
WEB_EXCEPTIONS: dict[tuple[str, str], str] = {}
#: sqlalchemy names a router or a page may import: types for annotations, nothing that
#: builds or runs a query.
SQL_TYPES = {"Session", "sessionmaker", "Engine"}
#: Methods that run SQL or change the unit of work (session.execute, .scalars, .add, ...).
SESSION_CALLS = {"execute", "scalar", "scalars", "query", "add", "add_all", "delete", "merge",
                 "flush", "refresh", "get"}
SESSION_NAMES = {"session", "sess", "db", "s"}
#: Calls that always run or build SQL, whatever they are called on.
QUERY_CALLS = {"execute", "scalar", "scalars", "query"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports: a module, or a package's member module when one exists
    names: tuple[str, ...]  # for ``from x import a, b``
    line: int

    def of(self, *prefixes: str) -> bool:
        return any(self.target == p or self.target.startswith(p + ".") for p in prefixes)

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        base = ROOT / package.replace(".", "/")
        if base.with_suffix(".py").is_file():
            yield base.with_suffix(".py")
        yield from sorted(base.rglob("*.py")) if base.is_dir() else iter(())


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def is_module(name: str) -> bool:
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, parsed: ast.Module | None = None) -> Iterator[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(parsed or tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names = tuple(a.name for a in node.names)
            members = [f"{base}.{n}" for n in names if is_module(f"{base}.{n}")]
            for target in members or [base]:
                yield Import(module, target, names, node.lineno)


def all_imports(*packages: str) -> list[Import]:
    return [i for path in sources(*packages) for i in imports(path)]


def offenders(found: list[Import] | list[str]) -> None:
    assert not found, "\n".join(map(str, found))


def test_services_import_no_web_framework_and_no_outer_room() -> None:
    offenders([i for i in all_imports("registry.services")
               if i.of(*WEB_FRAMEWORKS, "registry.api", "registry.ui", "registry.web",
                       "registry.client", "cli", "merge_worker")])


def test_api_and_ui_do_not_import_each_other() -> None:
    ui_to_api = [i for i in all_imports("registry.ui") if i.of("registry.api")]
    api_to_ui = [i for i in all_imports("registry.api")
                 if i.of("registry.ui") and i.module != ASSEMBLER]
    offenders(ui_to_api + api_to_ui)


def test_the_assembler_is_the_one_that_mounts_the_ui() -> None:
    assert any(i.of("registry.ui") for i in imports(ROOT / "registry/api/app.py"))


def test_the_web_context_imports_neither_api_nor_ui() -> None:
    found = [i for i in all_imports("registry.web") if i.of("registry.api", "registry.ui")]
    offenders([i for i in found if (i.module, i.target) not in WEB_EXCEPTIONS])
    stale = set(WEB_EXCEPTIONS) - {(i.module, i.target) for i in found}
    assert not stale, f"no longer needed, remove from WEB_EXCEPTIONS: {stale}"


#: What code on the client side of HTTP never imports: it may run on a host that reaches
#: nothing but the API (and the blob store's presigned URLs).
SERVER_SIDE = ("registry.services", "registry.models", "registry.db", "registry.api",
               "registry.ui", "registry.web", "registry.blobs", "registry.prometheus",
               "sqlalchemy", "fastapi", "starlette", "cli", "merge_worker")


@pytest.mark.parametrize("room", ["registry.client", "registry.serving", "registry.wire",
                                  "registry.agent"])
def test_the_client_side_talks_to_the_registry_over_http_only(room: str) -> None:
    offenders([i for i in all_imports(room) if i.of(*SERVER_SIDE)])


def test_the_statistics_are_pure() -> None:
    offenders([i for i in all_imports("registry.stats")
               if i.of(*SERVER_SIDE, "registry.client", "registry.serving", "httpx",
                       "urllib3", "boto3", "registry.config")])


def test_the_worker_uses_services_not_the_web_rooms() -> None:
    offenders([i for i in all_imports("merge_worker")
               if i.of("registry.api", "registry.ui", "registry.web", "registry.client", "cli",
                       *WEB_FRAMEWORKS)])


def test_cli_reaches_the_database_only_in_its_server_side_commands() -> None:
    server_side = {"cli.server", "cli.tokens"}  # lorareg serve, db upgrade, token create --db
    offenders([i for i in all_imports("cli") if i.module not in server_side
               and i.of("registry.db", "registry.models", "registry.api", "registry.ui",
                        "registry.web", "sqlalchemy")])


def test_no_module_imports_a_main_module() -> None:
    offenders([i for i in all_imports("registry", "cli", "merge_worker")
               if i.target.endswith("__main__")])


def sql_uses(path: Path, parsed: ast.Module | None = None) -> Iterator[str]:
    """Where a module builds or runs SQL, or writes an audit event."""
    where, parsed = module_name(path), parsed or tree(path)
    for i in imports(path, parsed):
        if i.of("sqlalchemy") and not i.of("sqlalchemy.exc") and not (
                i.names and set(i.names) <= SQL_TYPES):
            yield f"{i} {list(i.names)}"
    for node in ast.walk(parsed):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr, owner = node.func.attr, node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else None
        if attr in QUERY_CALLS or (attr in SESSION_CALLS and owner_name in SESSION_NAMES):
            yield f"{where}:{node.lineno} calls {owner_name or '...'}.{attr}()"
        if attr == "record" and owner_name == "audit":
            yield f"{where}:{node.lineno} writes an audit event (audit.record)"


@pytest.mark.parametrize("room", ["registry.api", "registry.ui", "registry.web",
                                  "registry.prometheus"])
def test_routers_and_pages_run_no_queries_and_write_no_audit(room: str) -> None:
    offenders([use for path in sources(room) for use in sql_uses(path)])


def test_the_checks_see_what_they_look_for() -> None:
    """The AST reading itself: a relative import resolves, a query and an audit write are
    seen, a type import is not counted as a query."""
    sample = ast.parse(
        "from sqlalchemy import select\nfrom sqlalchemy.orm import Session\n"
        "from ..deps import Ctx\n"
        "def f(session: Session) -> None:\n"
        "    session.scalars(select(1))\n    audit.record(session)\n")
    path = ROOT / "registry/api/routes/sample.py"
    assert Import("registry.api.routes.sample", "registry.api.deps", ("Ctx",), 3) in list(
        imports(path, sample))
    uses = list(sql_uses(path, sample))
    assert any("imports sqlalchemy ['select']" in u for u in uses)
    assert not any("sqlalchemy.orm" in u for u in uses)
    assert any("session.scalars()" in u for u in uses)
    assert any("audit.record" in u for u in uses)
