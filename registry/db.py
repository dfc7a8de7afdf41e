"""Engine and session factory: SQLite for the embedded default, PostgreSQL in production.

SQLite notes: every transaction that may write starts with ``BEGIN IMMEDIATE`` so that the
write lock is taken up front. With pysqlite's default deferred transactions, two writers that
both read first deadlock on lock upgrade and one fails with "database is locked"; immediate
transactions make them queue behind ``busy_timeout`` instead, which is the serialized
equivalent of PostgreSQL's row locks for a single-machine registry. Read-only transactions
(``transaction(..., readonly=True)``: the API's GET requests, resolve's snapshot loads) begin
deferred, so readers never queue for the write lock (WAL lets them read beside a writer), and
run with ``PRAGMA query_only`` so that a write slipping into one fails at once, loudly. On
PostgreSQL they are ``READ ONLY`` transactions, so both backends refuse such a write alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine configured for lorareg's concurrency model."""
    if is_sqlite(url):
        return _sqlite_engine(url, **kwargs)
    u = make_url(url)
    if u.drivername == "postgresql":
        # psycopg 3 is the driver we ship; plain postgresql:// would look for psycopg2.
        u = u.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (see module docstring).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = bool(conn.get_execution_options().get(READONLY))
        # query_only stays set on the DBAPI connection: only a change of mode needs the PRAGMA
        # (``conn.info`` lives and dies with that connection).
        if conn.info.get(READONLY) is not readonly:
            conn.exec_driver_sql(f"PRAGMA query_only={int(readonly)}")
            conn.info[READONLY] = readonly
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, so concurrent creators of one row do not fail."""
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    session.execute(ins.values(**values).on_conflict_do_nothing())


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


READONLY = "lorareg_readonly"


@contextmanager
def transaction(factory: sessionmaker[Session], *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception. ``readonly``: the
    work only reads (on SQLite it then takes no write lock and may not write)."""
    session = factory()
    if readonly:  # on PostgreSQL: a READ ONLY transaction (SQLite ignores that option)
        session.connection(execution_options={READONLY: True, "postgresql_readonly": True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(factory: sessionmaker[Session]) -> None:
    """``SELECT 1`` in a read-only transaction (it queues behind no writer): readiness checks
    call it and turn whatever the driver raises into their own answer."""
    with transaction(factory, readonly=True) as session:
        session.execute(text("SELECT 1"))
