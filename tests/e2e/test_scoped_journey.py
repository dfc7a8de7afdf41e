"""The CI journey with namespace-scoped tokens only (issue 15): on PostgreSQL, an S3 endpoint,
two API processes and a worker, a writer, a promoter and a reader of ``alpha`` push, merge,
promote, resolve and pull through the real CLI; every attempt on ``beta`` (and every attempt
beyond a role) is refused and changes nothing: row counts and the audit log stay as they were.
The only unscoped token is the curator's, who registers the shared base."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from registry.db import make_engine, make_session_factory, transaction
from registry.models import (
    AdapterVersion,
    ApiToken,
    AuditEvent,
    BaseModel,
    Blob,
    BlobHolder,
    ChannelEvent,
    Job,
    Namespace,
)
from registry.services import tokens
from registry.services.context import Actor
from tests.cli.helpers import Done, run, run_all
from tests.fixtures.models import TinyModels
from tests.fixtures.server import LiveServer, base_env, start_uvicorn
from tests.fixtures.workers import spawn_worker, stop_workers

pytestmark = pytest.mark.e2e
COUNTED = (AdapterVersion, AuditEvent, Blob, BlobHolder, BaseModel, ChannelEvent, Job,
           Namespace, ApiToken)


def mint(url: str, role: str, namespace: str | None) -> str:
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("operator"),
                                               name=f"{role}-{namespace or 'all'}", role=role,
                                               namespace=namespace)
        return plaintext
    finally:
        engine.dispose()


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {m.__tablename__: int(conn.scalar(select(func.count()).select_from(m)) or 0)
                    for m in COUNTED}
    finally:
        engine.dispose()


def ok(done: Done) -> Done:
    assert done.code == 0, (done.args, done.stdout, done.stderr)
    return done


@pytest.fixture
def fleet(pg_databases: object, request: pytest.FixtureRequest, s3_bucket: str,
          s3_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, object]]:
    url: str = request.getfixturevalue("pg_databases").fresh()
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=url,
                   LORAREG_BLOB_URL=f"s3://{s3_bucket}/lorareg", **s3_env)
    apis = [start_uvicorn(env, tmp_path / f"api-{i}.log") for i in range(2)]
    worker = spawn_worker(env, tmp_path / "worker", poll=0.2)
    roles = {"curator": ("curator", None), "writer": ("writer", "alpha"),
             "promoter": ("promoter", "alpha"), "reader": ("reader", "alpha"),
             "beta": ("writer", "beta")}
    cli = {}
    for i, (who, (role, ns)) in enumerate(roles.items()):
        home = tmp_path / who
        cli[who] = {**env, "LORAREG_URL": apis[i % 2].url, "LORAREG_TOKEN": mint(url, role, ns),
                    "HOME": str(home), "LORAREG_CONFIG": str(home / "cli.json"),
                    "LORAREG_FINGERPRINT_CACHE": str(home / "fp.sqlite")}
    try:
        yield {"url": url, "apis": apis, "cli": cli}
    finally:
        stop_workers(worker)
        for api in apis:
            api.stop()


def test_namespace_scoped_tokens_run_the_whole_journey_and_nothing_crosses(
    fleet: dict[str, object], tiny_models: TinyModels, tmp_path: Path
) -> None:
    url: str = fleet["url"]  # type: ignore[assignment]
    apis: list[LiveServer] = fleet["apis"]  # type: ignore[assignment]
    cli: dict[str, dict[str, str]] = fleet["cli"]  # type: ignore[assignment]
    base = tiny_models.base("llama")
    first, second = (tiny_models.adapter(base, r=4, lora_alpha=8 + i) for i in range(2))
    ok(run(cli["curator"], "base", "register", str(base), "--name", "tiny/llama", "--revision",
           "r1", "--upload"))

    # alpha's writer, promoter and reader do the whole CI journey
    pushed = ok(run(cli["writer"], "--json", "push", str(first), "--adapter", "alpha/bot",
                    "--base", "tiny/llama@r1", "--metric", "accuracy=0.9")).json()
    assert pushed["version"] == 1
    ok(run(cli["beta"], "push", str(second), "--adapter", "beta/bot", "--base", "tiny/llama@r1"))
    merged = ok(run(cli["writer"], "--json", "merge", "alpha/bot@1", "--wait")).json()
    assert merged["status"] == "succeeded", merged
    ok(run(cli["promoter"], "promote", "alpha/bot@1", "--channel", "prod", "--now"))
    resolved = ok(run(cli["reader"], "--json", "resolve", "alpha/bot:prod", "--key", "u1")).json()
    assert resolved["version"] == 1
    ok(run(cli["reader"], "pull", "alpha/bot@1", "-o", str(tmp_path / "adapter")))
    ok(run(cli["reader"], "pull", "alpha/bot@1", "--merged", "-o", str(tmp_path / "merged")))
    for path in first.iterdir():
        assert (tmp_path / "adapter" / path.name).read_bytes() == path.read_bytes()

    # every attempt across namespaces or beyond a role: refused, nothing changed
    before = counts(url)
    attempts = [
        (cli["beta"], ["push", str(second), "--adapter", "alpha/bot", "--base", "tiny/llama@r1"]),
        (cli["writer"], ["push", str(first), "--adapter", "beta/other", "--base",
                         "tiny/llama@r1"]),
        (cli["writer"], ["merge", "beta/bot@1"]),
        (cli["writer"], ["yank", "beta/bot@1", "--reason", "x"]),
        (cli["writer"], ["metrics", "log", "beta/bot@1", "accuracy=0.1"]),
        (cli["writer"], ["promote", "alpha/bot@1", "--channel", "staging", "--now"]),
        (cli["writer"], ["base", "register", str(base), "--name", "tiny/llama", "--revision",
                         "r2"]),
        (cli["promoter"], ["promote", "beta/bot@1", "--channel", "prod", "--now"]),
        (cli["promoter"], ["push", str(second), "--adapter", "alpha/bot", "--base",
                           "tiny/llama@r1"]),
        (cli["reader"], ["push", str(second), "--adapter", "alpha/bot", "--base",
                         "tiny/llama@r1"]),
        (cli["reader"], ["rollback", "alpha/bot:prod"]),
        (cli["reader"], ["token", "create", "--name", "x", "--role", "reader"]),
        (cli["reader"], ["pull", "beta/bot@1", "-o", str(tmp_path / "stolen")]),
        (cli["writer"], ["gc"]),
    ]
    refused = run_all([(env, ["--json", *args]) for env, args in attempts])
    for done in refused:
        assert done.code in (2, 5), (done.args, done.code, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "stolen").exists()
    assert counts(url) == before

    # beta's blobs are neither announced to alpha nor readable by alpha's reader
    def digests_of(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
                if p.is_file()}

    digests = sorted(digests_of(second) - digests_of(first))  # alpha holds what it uploaded
    assert digests
    auth = {"Authorization": f"Bearer {cli['writer']['LORAREG_TOKEN']}"}
    missing = httpx.post(f"{apis[0].url}/api/v1/blobs/missing", json={"digests": digests},
                         headers=auth).json()["missing"]
    assert sorted(missing) == digests
    reader = {"Authorization": f"Bearer {cli['reader']['LORAREG_TOKEN']}"}
    for digest in digests:
        assert httpx.get(f"{apis[1].url}/api/v1/blobs/{digest}",
                         headers=reader).status_code == 404
    assert counts(url) == before
