"""Serving pool pages of the UI in-process: the list, a pool with its settings, channels,
desired set (served names, verdicts) and the versions that left it; namespace scoping."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import update

from registry.blobs import LocalBlobStore
from registry.db import make_session_factory, transaction
from registry.models import ServingPool
from registry.services import pools
from registry.services.pools import PoolSettings
from tests.ui.conftest import UI
from tests.ui.helpers import ACTOR, ADAPTER

POOL_PAGE = "/ui/pools/acme/gpu-a"


def make_pool(ui: UI, tmp_path: Path) -> None:
    """acme/gpu-a serving acme/support-bot:prod (v4 stable, v5 canary), v1 pinned then
    released."""
    store = LocalBlobStore(tmp_path / "blobs")
    with transaction(make_session_factory(ui.engine)) as session:
        pool = pools.create_pool(session, ACTOR, "acme/gpu-a", PoolSettings(
            base="tiny/llama@abc", model_id="/models/llama", dtype="bfloat16", max_loras=3,
            served_model_name="llama"))
        pools.bind(session, ACTOR, store, pool, f"{ADAPTER}:prod")
        pools.pin(session, ACTOR, store, pool, f"{ADAPTER}@1")
        pools.unpin(session, ACTOR, pool, f"{ADAPTER}@1")


def rows(html: str, table_id: str) -> list[str]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)[1:]


def test_pool_list_and_page(ui: UI, tmp_path: Path) -> None:
    make_pool(ui, tmp_path)
    with ui.engine.begin() as conn:  # as an operator editing the database would: checks skipped
        conn.execute(update(ServingPool).values(max_adapter_memory=10))
    ui.sign_in("reader", "acme")
    listing = ui.get("/ui/pools")
    assert listing.status_code == 200
    assert "acme/gpu-a" in listing.text and f"{ADAPTER}:prod" in listing.text
    page = ui.get(POOL_PAGE)
    assert page.status_code == 200, page.text
    assert "/models/llama" in page.text and "llama" in page.text
    desired = rows(page.text, "desired")
    assert len(desired) == 2
    assert "acme~support-bot~4~" in desired[0] and f"{ADAPTER}:prod (stable)" in desired[0]
    assert "acme~support-bot~5~" in desired[1] and f"{ADAPTER}:prod (canary)" in desired[1]
    assert all("st-ok" in row for row in desired)
    assert "more than the 10 B" in page.text  # the set's own problem: the memory budget
    assert "acme~support-bot~1~" in rows(page.text, "left")[0]


def test_pool_pages_are_scoped_to_the_viewers_namespace(ui: UI, tmp_path: Path) -> None:
    make_pool(ui, tmp_path)
    ui.sign_in("reader", "ml-infra")
    assert "acme/gpu-a" not in ui.get("/ui/pools").text
    denied = ui.get(POOL_PAGE)
    assert denied.status_code == 403 and "may not read in namespace" in denied.text
    assert ui.get("/ui/pools/acme/nope").status_code == 403
    ui.sign_in("admin")
    assert ui.get("/ui/pools/acme/nope").status_code == 404
    assert ui.get("/ui/pools?namespace=Bad!").status_code == 400
