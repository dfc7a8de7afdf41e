"""Property-based fuzzing of the whole REST API from its own ``/openapi.json`` (schemathesis).

Every operation the app documents gets generated requests (schemathesis' examples, coverage
and fuzzing phases; valid and invalid data), sent in-process (ASGI) to the real app on a
fresh, migrated SQLite database with a local blob store, as an admin. Checks (``CHECKS``): no
5xx answer, and every answer is documented -- status, media type, headers and body.

Random path segments almost never name something that exists, so half of the generated
``ns``/``name``/``sel``/``digest``/``channel`` values are drawn from what the fixture seeded
(one pushed version, its blobs, one channel): success answers of the version, metrics, blob
and channel routes get checked too, not only their 4xx answers.

Bounded and reproducible: at most ``MAX_EXAMPLES`` fuzzed cases per operation, derandomized,
no example database (so no ``.hypothesis`` folder is left behind).
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.configuration
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis import checks
from schemathesis.core.parameters import ParameterLocation
from sqlalchemy import Engine

from registry.api.app import create_app
from registry.blobs import LocalBlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor
from tests.fixtures.adapters import adapter_files

MAX_EXAMPLES = 15
# Every answer: no 5xx; its status, media type, required headers and body are the documented
# ones (errors are problem+json, blob downloads octet-stream: registry/api/problems.py);
# undocumented methods get 405; invalid requests are refused (413 included: the fixture's
# 64 KiB body limit answers oversized arrays before validation does).
# Not checked: `positive_data_acceptance`. Path segments (ns, name, sel, channel, digest) are
# plain strings in the document, so most schema-valid values are malformed names (400) or
# name nothing (404), as designed. `use_after_free` and `ensure_resource_availability` would
# pass without testing anything: the document declares no links. `ignored_auth` is on: every
# operation that declares the ApiToken bearer scheme is re-sent without it (and with a bogus
# token) and must be refused.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_headers_conformance,
          checks.response_schema_conformance, checks.negative_data_rejection,
          checks.unsupported_method, checks.missing_required_header, checks.ignored_auth]
SEED_NS, SEED_NAME, SEED_CHANNEL = "acme", "bot", "staging"
SEED_FILES = adapter_files()
SEED_DIGESTS = sorted(hashlib.sha256(data).hexdigest() for data in SEED_FILES.values())


def _fuzz_config() -> schemathesis.Config:
    seeded = {"ns": [SEED_NS], "name": [SEED_NAME], "sel": ["1", "latest"],
              "digest": SEED_DIGESTS, "channel": [SEED_CHANNEL]}
    return schemathesis.Config.from_dict({
        "dictionaries": {key: {"values": values} for key, values in seeded.items()},
        "parameters": {f"path.{key}": {"dictionary": key, "probability": 0.5}
                       for key in seeded},
        "checks": {"negative_data_rejection": {"expected-statuses": [
            400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]}},
    })


def _spec_app() -> FastAPI:
    """The real app, built only to serve its ``/openapi.json`` while this module is imported
    (the spec does not depend on the database or the store; neither is touched)."""
    settings = Settings(mode="production", database_url="sqlite://", blob_url="file:///unused")
    return create_app(settings, engine=make_engine("sqlite://"),
                      store=LocalBlobStore(Path("/unused")), host="0.0.0.0")


# Hypothesis keeps caches (unicode tables, constants of our sources) in ./.hypothesis even
# without an example database, from the moment the schema below is loaded: keep them in a
# temporary folder that is removed when the process exits.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="lorareg-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
hypothesis.configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)

# schemathesis' lazy loader (`schemathesis.pytest.from_fixture`) does not work with pytest 9:
# it sets `Function._nodeid`, which pytest 9 removed. So the schema is loaded here, at import,
# and every case is sent to the app of the `api` fixture instead (`call_and_validate(app=...)`).
full_schema = schemathesis.openapi.from_asgi("/openapi.json", _spec_app(), config=_fuzz_config())

schema = full_schema


def _admin_token(engine: Engine) -> str:
    with transaction(make_session_factory(engine)) as session:
        _, plaintext = tokens.create_token(session, Actor("fuzz"), name="fuzz-admin",
                                           role="admin")
    return plaintext


def _seed(client: TestClient) -> None:
    """One pushed version (with a metric and a label), its blobs and an empty channel: list
    endpoints answer with real items, and the seeded path values above name things that
    exist."""
    entries: list[dict[str, Any]] = []
    for path, data in SEED_FILES.items():
        digest = hashlib.sha256(data).hexdigest()
        assert client.put(f"/api/v1/blobs/{digest}", content=data).status_code == 201
        entries.append({"path": path, "digest": digest, "size": len(data)})
    r = client.post(f"/api/v1/adapters/{SEED_NS}/{SEED_NAME}/versions", json={
        "files": entries, "base": {"hub_id": "tiny/llama", "revision": "abc"},
        "metrics": [{"key": "acc", "value": 0.9}], "labels": {"lang": "de"},
    })
    assert r.status_code == 201, r.text
    r = client.put(f"/api/v1/adapters/{SEED_NS}/{SEED_NAME}/channels/{SEED_CHANNEL}", json={})
    assert r.status_code == 200, r.text


@pytest.fixture
def api(fresh_db_url: str, tmp_path: Path) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    """The app on a fresh migrated, seeded database, and an admin token's headers.

    One per operation: cases of one operation share it (writes accumulate, as against a real
    server), operations do not see each other's writes.
    """
    settings = Settings(mode="production", database_url=fresh_db_url,
                        blob_url=f"file://{tmp_path / 'blobs'}", max_json_body=64 * 1024,
                        max_blob_size=1024 * 1024)
    engine = make_engine(fresh_db_url)
    app = create_app(settings, engine=engine, store=LocalBlobStore(tmp_path / "blobs"),
                     host="0.0.0.0")
    headers = {"Authorization": f"Bearer {_admin_token(engine)}"}
    with TestClient(app, headers=headers) as client:
        _seed(client)
    yield app, headers
    engine.dispose()


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES, database=None, derandomize=True, deadline=None,
    # The `api` fixture is set up once per operation on purpose (see its docstring), and
    # schemathesis' generated bodies are slow to draw and often filtered: neither is a bug.
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                           hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.filter_too_much,
                           hypothesis.HealthCheck.data_too_large],
)
def test_api_conforms_to_its_schema(
    case: schemathesis.Case[Any], api: tuple[FastAPI, dict[str, str]]
) -> None:
    app, headers = api
    # A case generated to break its headers (e.g. without the required Authorization, or with a
    # made-up token) is sent as generated: adding the admin token would make it valid.
    negative_headers = case.meta is not None and case.meta.is_negative_at(
        ParameterLocation.HEADER)
    case.call_and_validate(app=app, headers=None if negative_headers else headers,
                           checks=CHECKS)
