"""The API's adapter list and the UI's adapter list are one service: for the same caller and
the same filters (search in name and description, labels, base, namespace, sort) both HTTP
paths answer the same adapters in the same order, page after page, on PostgreSQL."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from registry.db import make_engine, make_session_factory, transaction
from registry.models import Adapter, AdapterVersion, Blob, VersionFile
from registry.services import adapters
from registry.services.context import Actor
from tests.ui.conftest import UI, build_ui

ACTOR = Actor("seeder")
NAMESPACES = ("acme", "beta", "gamma")
KINDS = ("support-bot", "Router", "summarizer", "classifier", "triage")
DESCRIPTIONS = ("German customer-support assistant", "Handles ROUTING of tickets",
                "summaries of long threads", "", "answers 100% of FAQs")
BASES = (("tiny/llama", "abc"), ("tiny/llama", "def"), ("other/base", "v1"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROW_RE = re.compile(r'<a class="strong" href="/ui/adapters/([^"]+)">')
NEXT_RE = re.compile(r'<a class="btn btn-secondary btn-sm" rel="next" href="([^"]+)">')

FILTERS: list[dict[str, Any]] = [
    {},
    {"q": "rout"},  # names (Router-..) and descriptions (ROUTING), any case
    {"q": "ROUTING"},  # descriptions only
    {"q": "100%"},  # LIKE wildcards are plain text
    {"q": "_"},
    {"label": ["team=a"]},
    {"label": ["team=a", "lang=de"]},
    {"base": "tiny/llama"},  # any revision
    {"base": "tiny/llama@def"},
    {"base": "other/base@v1", "q": "bot"},
    {"base": "nobody/trained-on-this"},
    {"namespace": "beta", "label": ["lang=fr"]},
]


@dataclass(frozen=True)
class Seed:
    name: str
    description: str
    labels: dict[str, str]
    bases: list[tuple[str, str]]
    minute: int


SEEDS = [Seed(f"{NAMESPACES[i % 3]}/{KINDS[i % 5]}-{i:02d}", DESCRIPTIONS[(i // 2) % 5],
              {"team": "ab"[i % 2], "lang": ("de", "en", "fr")[(i // 3) % 3]},
              ([BASES[i % 3]] + ([BASES[(i + 1) % 3]] if i % 5 == 0 else [])) if i % 4 else [],
              i % 7)
         for i in range(30)]


def seed(session: Session) -> None:
    """30 adapters over three namespaces; most with versions on one or two bases, a few with
    none; last-push times with many ties, so pages split between equal sort keys."""
    digest = hashlib.sha256(b"parity").hexdigest()
    session.execute(insert(Blob).values(digest=digest, size=1))
    for row in SEEDS:
        adapters.ensure_adapter(session, ACTOR, row.name, description=row.description)
        adapter = adapters.update_adapter(session, ACTOR, row.name, labels=row.labels)
        _versions(session, adapter, digest, row.bases)
        session.execute(update(Adapter).where(Adapter.id == adapter.id).values(
            updated_at=T0 + timedelta(minutes=row.minute)))


def _versions(session: Session, adapter: Adapter, digest: str,
              bases: list[tuple[str, str]]) -> None:
    for number, (hub_id, revision) in enumerate(bases, 1):
        version_id = session.scalars(insert(AdapterVersion).returning(AdapterVersion.id), [{
            "adapter_id": adapter.id, "number": number, "manifest_digest": f"{number:064x}",
            "peft_config": {"r": 8}, "base_hub_id": hub_id, "base_revision": revision,
            "provenance": {}, "total_size": 1}]).one()
        session.execute(insert(VersionFile).values(version_id=version_id, path="a.bin",
                                                   digest=digest, size=1))
    adapter.next_version = len(bases) + 1


@pytest.fixture
def parity_ui(fresh_db_url: str, tmp_path: Path) -> Iterator[UI]:
    engine = make_engine(fresh_db_url)
    with transaction(make_session_factory(engine)) as session:
        seed(session)
    engine.dispose()
    client, engine = build_ui(fresh_db_url, tmp_path)
    yield UI(client, engine, None)  # type: ignore[arg-type]
    engine.dispose()


def expected(filters: dict[str, Any], scope: str | None) -> set[str]:
    """What the filters mean, computed from the seed without SQL."""
    labels = dict(item.split("=", 1) for item in filters.get("label", []))
    hub, _, revision = filters.get("base", "").partition("@")
    return {r.name for r in SEEDS
            if (scope is None or r.name.startswith(f"{scope}/"))
            and r.name.startswith(filters.get("namespace", r.name.split("/")[0]) + "/")
            and filters.get("q", "").lower() in (r.name + "\0" + r.description).lower()
            and labels.items() <= r.labels.items()
            and (not hub or any(h == hub and (not revision or rev == revision)
                                for h, rev in r.bases))}


def api_names(ui: UI, token: str, params: dict[str, Any]) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        answer = ui.client.get("/api/v1/adapters", params={**params, "cursor": cursor},
                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        names += [item["name"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return names


def ui_names(ui: UI, params: dict[str, Any]) -> list[str]:
    names: list[str] = []
    page = ui.client.get("/ui/adapters", params=params, follow_redirects=False)
    while True:
        assert page.status_code == 200, page.text
        names += ROW_RE.findall(page.text)
        following = NEXT_RE.search(page.text)
        if following is None:
            return names
        page = ui.client.get(html.unescape(following.group(1)), follow_redirects=False)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("scope", [None, "acme"])
def test_api_and_ui_list_the_same_adapters_for_the_same_filters(
        parity_ui: UI, scope: str | None) -> None:
    token = parity_ui.sign_in("reader", scope)
    everything = api_names(parity_ui, token, {"limit": 500})
    assert len(everything) == (30 if scope is None else 10)
    nonempty = 0
    for filters in FILTERS:
        for sort in ("updated_at", "name"):
            params = {**filters, "sort": sort, "limit": 4}
            from_api = api_names(parity_ui, token, params)
            assert from_api == ui_names(parity_ui, params), params
            assert from_api == api_names(parity_ui, token, {**params, "limit": 500}), params
            assert set(from_api) == expected(filters, scope), params
            nonempty += bool(from_api)
    assert nonempty >= len(FILTERS)  # most filters select something: the check is not vacuous


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_api_list_searches_descriptions_and_filters_by_base(parity_ui: UI) -> None:
    token = parity_ui.sign_in("reader")

    def names(**params: Any) -> set[str]:
        return set(api_names(parity_ui, token, params))

    assert names(q="rOuTiNg") == {r.name for r in SEEDS if "routing" in r.description.lower()}
    assert names(q="rout") == {r.name for r in SEEDS
                               if "rout" in (r.name + r.description).lower()}
    assert names(base="tiny/llama@def") == {r.name for r in SEEDS if BASES[1] in r.bases}
    assert names(base="tiny/llama") == {r.name for r in SEEDS
                                        if any(hub == "tiny/llama" for hub, _ in r.bases)}
    assert len(names(q="rout")) > len(names(q="routing")) > 0
    bad = parity_ui.client.get("/api/v1/adapters", params={"sort": "size"},
                               headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 400 and bad.headers["content-type"].startswith(
        "application/problem+json")
