"""Alembic is the only source of the schema: head equals the models on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry import migrate
from registry.db import make_engine
from registry.models import Base
from tests.conftest import PgDatabases


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        dbs: PgDatabases = request.getfixturevalue("pg_databases")
        return dbs.empty()
    return f"sqlite:///{tmp_path / 'empty.db'}"


def test_upgrade_empty_database_to_head_has_no_drift(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], f"models and migrations differ: {diff}"
        assert {"adapters", "adapter_versions", "blobs", "audit_events"} <= tables
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        migrate.upgrade(engine)
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_revision_files_are_named_rev_slug() -> None:
    files = sorted(p.name for p in (migrate.MIGRATIONS_DIR / "versions").glob("*.py"))
    files = [f for f in files if f != "__init__.py"]
    assert files, "no migrations"
    for name in files:
        rev, _, slug = name.removesuffix(".py").partition("_")
        assert rev.isdigit() and slug, name
