"""Shared fixtures: one migrated database per backend per session, a rolled-back transaction
per test, and real blob stores (local folder and a moto S3 server over HTTP)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from registry import migrate
from registry.db import make_engine

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.models",
    "tests.fixtures.server",
    "tests.fixtures.api",
    "tests.fixtures.vllm",
]

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
BACKENDS = ["sqlite", "postgresql"]


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_DSN):
            return True
    except psycopg.OperationalError:
        return False


def _require_pg() -> None:
    if _pg_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is unreachable (CI=true: not skipping)")
    pytest.skip("PostgreSQL on 127.0.0.1:5432 is unreachable")


def _pg_exec(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class PgDatabases:
    """A migrated template database; fresh copies of it are cheap (CREATE ... TEMPLATE)."""

    def __init__(self) -> None:
        self.prefix = f"lorareg_t{os.getpid()}"
        self.template = f"{self.prefix}_tmpl"
        self.created: list[str] = [self.template]
        _pg_exec(f'DROP DATABASE IF EXISTS "{self.template}"')
        _pg_exec(f'CREATE DATABASE "{self.template}"')
        engine = make_engine(PG_URL.format(db=self.template))
        migrate.upgrade(engine)
        engine.dispose()

    def fresh(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return PG_URL.format(db=name)

    def empty(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        _pg_exec(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return PG_URL.format(db=name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    _require_pg()
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Database backend of ``fresh_db_url``: sqlite unless parametrized indirectly, e.g.
    ``@pytest.mark.parametrize("backend", BACKENDS, indirect=True)``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def fresh_db_url(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, sqlite_template: Path
) -> str:
    """A committed-to, migrated database of its own for tests that need real commits
    (concurrency, crash consistency, e2e). Parametrize with ``backend``."""
    if backend == "postgresql":
        dbs: PgDatabases = request.getfixturevalue("pg_databases")
        return dbs.fresh()
    target = tmp_path / "lorareg.db"
    target.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{target}"


@pytest.fixture(scope="session", params=BACKENDS)
def engine(request: pytest.FixtureRequest, sqlite_template: Path) -> Iterator[Engine]:
    """One migrated database per backend for the whole session."""
    if request.param == "postgresql":
        dbs: PgDatabases = request.getfixturevalue("pg_databases")
        eng = make_engine(dbs.fresh())
    else:
        copy = sqlite_template.with_name("session.db")
        copy.write_bytes(sqlite_template.read_bytes())
        eng = make_engine(f"sqlite:///{copy}")
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    with engine.connect() as conn:
        trans = conn.begin()
        sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield sess
        finally:
            sess.close()
            trans.rollback()
