"""`lorareg serve` (the embedded registry) and `lorareg db upgrade`."""

from __future__ import annotations

import importlib.util
import sys
import threading

import click

from registry.config import get_settings

# sqlalchemy, alembic and the app are imported inside the commands: every other `lorareg`
# command starts without paying for them.

BANNER_NO_AUTH = (
    "WARNING: authentication is OFF (embedded single-user mode on {host}). Anyone who can "
    "reach this port can push, promote and delete. Bind a non-loopback address or set "
    "LORAREG_MODE=production to require tokens."
)
BOOTSTRAP_HINT = (
    "No API tokens exist yet. Create the first admin token against the database with:\n"
    "    lorareg token create --db --admin --name bootstrap\n"
    "(same LORAREG_DATABASE_URL as this server); it is shown once."
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="In-process merge/rollout worker threads (0 to disable).")
def serve(host: str, port: int, workers: int) -> None:
    """Run the registry: migrations applied on start, SQLite + local blobs by default."""
    import uvicorn

    from registry import migrate
    from registry.api.app import create_app
    from registry.db import make_engine

    settings = get_settings()
    settings.check_production(host)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine)
    app = create_app(settings, engine=engine, host=host)
    state = app.state.lorareg
    click.echo(f"lorareg {settings.mode}: database {_safe_url(settings.effective_database_url)}, "
               f"blobs {settings.effective_blob_url}", err=True)
    if not state.auth_required:
        click.secho(BANNER_NO_AUTH.format(host=host), fg="yellow", bold=True, err=True)
    elif not _has_tokens(engine):
        click.secho(BOOTSTRAP_HINT, fg="yellow", err=True)
    stopping = threading.Event()
    _start_embedded_workers(workers, stopping)
    click.echo(f"listening on http://{host}:{port}  (web UI: /ui, API docs: /docs)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        stopping.set()  # running jobs are released for the next start


def _start_embedded_workers(count: int, stopping: threading.Event) -> None:
    if count <= 0:
        return
    missing = [name for name in ("torch", "numba") if importlib.util.find_spec(name) is None]
    if missing:
        click.secho(f"merges are disabled: the worker needs {' and '.join(missing)} "
                    "(pip install torch==2.13.0 'lorareg[worker]')", fg="yellow", err=True)
        return
    from merge_worker.runner import start_workers

    start_workers(count, stopping)
    click.echo(f"{count} in-process worker thread(s) running merges", err=True)


def _has_tokens(engine: object) -> bool:
    from sqlalchemy import func, select

    from registry.db import make_session_factory
    from registry.models import ApiToken

    factory = make_session_factory(engine)  # type: ignore[arg-type]
    with factory() as session:
        return bool(session.scalar(select(func.count()).select_from(ApiToken)))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """Database administration."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Apply migrations (no alembic.ini needed; uses LORAREG_DATABASE_URL)."""
    from registry import migrate
    from registry.db import make_engine

    settings = get_settings()
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, revision)
    click.echo(f"database at revision {migrate.current_revision(engine)}", err=True)
    engine.dispose()
    sys.stdout.flush()


@click.command()
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker threads in this process.")
def worker(workers: int) -> None:
    """Run merge workers against LORAREG_DATABASE_URL until SIGTERM (= python -m merge_worker)."""
    from merge_worker.runner import main as worker_main

    worker_main(["--workers", str(workers)])
