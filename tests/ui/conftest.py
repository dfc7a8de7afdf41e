"""The UI in-process (ASGI) on a committed, seeded database, signed in as any role."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from registry.api.app import create_app
from registry.blobs import LocalBlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.models import AuditEvent
from registry.services import tokens
from registry.services.context import Actor
from tests.ui.helpers import Seeded, seed_database

ORIGIN = "http://testserver"
# Starlette's TestClient answers with httpx-compatible responses (httpx or httpx2).
Response = Any
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@dataclass
class UI:
    client: TestClient
    engine: Engine
    seeded: Seeded

    def token(self, role: str, namespace: str | None = None) -> str:
        with transaction(make_session_factory(self.engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("t"), name=f"{role}-{namespace}",
                                               role=role, namespace=namespace)
        return plaintext

    def sign_in(self, role: str = "admin", namespace: str | None = None) -> str:
        token = self.token(role, namespace)
        response = self.client.post("/ui/login", data={"token": token, "next": "/ui"},
                                    headers={"Origin": ORIGIN}, follow_redirects=False)
        assert response.status_code == 303, response.text
        return token

    def get(self, path: str, **kw: Any) -> Response:
        return self.client.get(path, follow_redirects=False, **kw)

    def csrf(self, path: str) -> str:
        """The CSRF token of the forms on ``path`` (a page the viewer may open)."""
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = CSRF_RE.search(page.text)
        assert found, "no CSRF field on the page"
        return found.group(1)

    def post(self, path: str, data: dict[str, str], *, origin: str | None = ORIGIN,
             csrf_from: str | None = None) -> Response:
        """POST a form from ``origin``, with the CSRF token of ``csrf_from``'s page."""
        if csrf_from is not None:
            data = {**data, "csrf_token": self.csrf(csrf_from)}
        headers = {"Origin": origin} if origin else {}
        return self.client.post(path, data=data, headers=headers, follow_redirects=False)

    def actions(self) -> list[tuple[str, str, str]]:
        """(action, actor, target) of every audit event, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.target)
                                .order_by(AuditEvent.id))
            return [(a, b, c) for a, b, c in rows]


def build_ui(url: str, tmp_path: Path, *, mode: str = "production",
             host: str = "0.0.0.0") -> tuple[TestClient, Engine]:
    settings = Settings(mode=mode, database_url=url,
                        blob_url=f"file://{tmp_path / 'blobs'}")
    engine = make_engine(url)
    app = create_app(settings, engine=engine, store=LocalBlobStore(tmp_path / "blobs"),
                     host=host)
    return TestClient(app, raise_server_exceptions=False), engine


@pytest.fixture
def ui(fresh_db_url: str, tmp_path: Path) -> Iterator[UI]:
    """Tokens required (production mode); seeded by tests.ui.helpers.seed_database."""
    seeded = seed_database(fresh_db_url, tmp_path / "blobs")
    client, engine = build_ui(fresh_db_url, tmp_path)
    yield UI(client, engine, seeded)
    engine.dispose()


@pytest.fixture
def embedded_ui(fresh_db_url: str, tmp_path: Path) -> Iterator[UI]:
    """Embedded single-user mode on loopback: no sign-in."""
    seeded = seed_database(fresh_db_url, tmp_path / "blobs")
    client, engine = build_ui(fresh_db_url, tmp_path, mode="embedded", host="127.0.0.1")
    yield UI(client, engine, seeded)
    engine.dispose()
