"""deploy/kubernetes: the commands the manifests name, run as their pods would run them.

The migration Job and the schema-wait init container against real PostgreSQL, the probes and
the ServiceMonitor's path against a real uvicorn process, and the gc and retention CronJobs'
exact command lines against that API (refused with a namespace's admin token, done with the
global one). Each gets the environment its container gets from the rendered ConfigMap.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select, update

from registry.blobs import LocalBlobStore
from registry.db import make_engine, make_session_factory, transaction
from registry.models import Adapter, AdapterVersion
from registry.services import bases, tokens, versions
from registry.services.context import Actor
from registry.services.versions import PushRequest
from tests.cli.helpers import run
from tests.conftest import PgDatabases
from tests.fixtures.adapters import adapter_files, store_files
from tests.fixtures.kustomize import Obj, config_map_env, kinds, named, pod_spec, rendered_trees
from tests.fixtures.server import LiveServer, base_env
from tests.registry.test_bases import entries, registration
from tests.registry.test_gc import age, put


@pytest.fixture
def production() -> list[Obj]:
    return copy.deepcopy(rendered_trees()["production"])


def manifest_env(objects: list[Obj], container: Obj, **overrides: str) -> dict[str, str]:
    """The container's ConfigMap environment (no secrets), plus test values."""
    env = {k: v for k, v in config_map_env(objects, container).items() if k != "HOME"}
    return base_env(**{**env, **overrides})


def run_schema_check(script: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), "--timeout", "0"], env=dict(env),
                          capture_output=True, text=True, timeout=120, check=False)


def set_revision(url: str, revision: str) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = %s", (revision,))


def test_migration_job_and_schema_wait_on_real_postgresql(
    production: list[Obj], pg_databases: PgDatabases, tmp_path: Path
) -> None:
    """The init container holds pods back until the Job's `lorareg db upgrade` ran, then
    lets them go; and lets an older image go on a schema newer than it knows (rollback)."""
    from alembic.script import ScriptDirectory

    from registry import migrate

    objects = production
    job = named(objects, "Job", "lorareg-migrate")
    (migrator,) = pod_spec(job)["containers"]
    api = named(objects, "Deployment", "lorareg-api")
    (waiter,) = pod_spec(api)["initContainers"]
    script = tmp_path / "wait_for_schema.py"
    script.write_text(named(objects, "ConfigMap", "lorareg-scripts")["data"][script.name])
    url = pg_databases.empty()
    env = manifest_env(objects, waiter, LORAREG_DATABASE_URL=url, HOME=str(tmp_path))
    before = run_schema_check(script, env)
    assert before.returncode == 1 and "run the lorareg-migrate Job" in before.stderr
    job_env = manifest_env(objects, migrator, LORAREG_DATABASE_URL=url, HOME=str(tmp_path))
    assert run(job_env, *migrator["command"][1:]).code == 0
    assert run_schema_check(script, env).returncode == 0
    first = ScriptDirectory.from_config(migrate.alembic_config()).get_base()
    assert isinstance(first, str)
    set_revision(url, first)
    assert run_schema_check(script, env).returncode == 1
    set_revision(url, "f00dfeedbeef")  # a revision from a release newer than this image
    assert run_schema_check(script, env).returncode == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_probes_answer_on_a_real_api_process(live_server: LiveServer,
                                             production: list[Obj]) -> None:
    api = named(production, "Deployment", "lorareg-api")
    (container,) = pod_spec(api)["containers"]
    (monitor,) = kinds(production, "ServiceMonitor")
    paths = [container["readinessProbe"]["httpGet"]["path"],
             container["livenessProbe"]["httpGet"]["path"],
             *[e["path"] for e in monitor["spec"]["endpoints"]]]
    for path in paths:
        assert httpx.get(f"{live_server.url}{path}", timeout=10).status_code == 200, path


ACTOR = Actor("k8s-test")


def seed_garbage_and_retention(db_url: str, blobs: Path) -> str:
    """Three versions of acme/bot with keep-last 1, and an unreferenced blob two days old."""
    engine = make_engine(db_url)
    store = LocalBlobStore(blobs)
    try:
        with transaction(make_session_factory(engine)) as session:
            bases.register_base(session, ACTOR, registration(entries()))
            for seed in range(3):
                files = store_files(session, store, adapter_files(seed=seed))
                versions.push_version(session, store, ACTOR, PushRequest(
                    "acme/bot", files, "tiny/llama", "abc"))
            session.execute(update(Adapter).values(keep_last=1))
            garbage = put(session, store, b"an abandoned upload" * 64)
            age(session, [garbage], timedelta(days=2))
        return garbage
    finally:
        engine.dispose()


def yanked(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(AdapterVersion)
                                   .where(AdapterVersion.status == "yanked")) or 0)
    finally:
        engine.dispose()


def namespace_admin(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, ACTOR, name="not-global",
                                               role="admin", namespace="other")
        return plaintext
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_maintenance_cronjobs_run_against_a_real_api(
    live_server: LiveServer, fresh_db_url: str, tmp_path: Path, production: list[Obj]
) -> None:
    """The CronJobs' exact commands: refused (exit 5, nothing changed) with an admin token
    of one namespace, done with the global admin token the Secret is documented to hold."""
    garbage = seed_garbage_and_retention(fresh_db_url, tmp_path / "blobs")
    store = LocalBlobStore(tmp_path / "blobs")
    jobs = {name: pod_spec(named(production, "CronJob", name))["containers"][0]
            for name in ("lorareg-gc", "lorareg-retention")}
    scoped = namespace_admin(fresh_db_url)
    for container in jobs.values():
        env = manifest_env(production, container, LORAREG_URL=live_server.url,
                           LORAREG_TOKEN=scoped, HOME=str(tmp_path))
        assert run(env, *container["command"][1:]).code == 5, container["command"]
    assert store.exists(garbage) and yanked(fresh_db_url) == 0
    assert live_server.admin_token is not None
    for container in jobs.values():
        env = manifest_env(production, container, LORAREG_URL=live_server.url,
                           LORAREG_TOKEN=live_server.admin_token, HOME=str(tmp_path))
        done = run(env, *container["command"][1:])
        assert done.code == 0, done.stderr
    assert not store.exists(garbage) and yanked(fresh_db_url) == 2
