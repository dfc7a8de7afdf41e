"""The caches of one API process are fields of its State (registry/web/caches.py): presigned
URLs are reused for half their life and never shared between two apps; both caches are
bounded, the encoded answers least recently used first."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from registry.api.resolve_answers import file_url
from registry.blobs import BlobStore
from registry.config import Settings
from registry.db import make_session_factory
from registry.web.caches import AnswerCache, PresignCache
from registry.web.context import State

DIGEST = "ab" * 32
BASE = "http://registry.test/"


def state(engine: Engine, store: BlobStore, now: list[float], presign: bool = True) -> State:
    settings = Settings(mode="production", database_url="sqlite://", presign_downloads=presign,
                        presign_ttl_seconds=60)
    built = State(settings=settings, sessions=make_session_factory(engine), store=store,
                  auth_required=True)
    built.presigned = PresignCache(clock=lambda: now[0])
    return built


@pytest.mark.parametrize("blob_store", ["s3"], indirect=True)
def test_presigned_urls_are_reused_for_half_their_life_per_app(
        engine: Engine, blob_store: BlobStore) -> None:
    now = [0.0]
    app, other = state(engine, blob_store, now), state(engine, blob_store, now)
    url = file_url(app, BASE, DIGEST)
    assert not url.startswith(BASE) and DIGEST in url  # a URL of the store, not ours
    assert other.presigned.get(DIGEST) is None  # another app keeps its own
    now[0] = 29.9
    assert file_url(app, BASE, DIGEST) == url and app.presigned.get(DIGEST) == url
    now[0] = 30.0  # half of the 60 s TTL: no longer handed out, a new one is made
    assert app.presigned.get(DIGEST) is None
    assert file_url(app, BASE, DIGEST) and app.presigned.get(DIGEST) is not None


@pytest.mark.parametrize("blob_store", ["local"], indirect=True)
def test_a_store_that_cannot_presign_or_presigning_off_gives_our_own_url(
        engine: Engine, blob_store: BlobStore) -> None:
    now = [0.0]
    assert file_url(state(engine, blob_store, now), BASE, DIGEST) == (
        f"{BASE}api/v1/blobs/{DIGEST}")
    off = state(engine, blob_store, now, presign=False)
    assert file_url(off, BASE, DIGEST) == f"{BASE}api/v1/blobs/{DIGEST}"
    assert off.presigned.get(DIGEST) is None


def test_caches_are_bounded() -> None:
    """Encoded answers: the least recently used goes first (a hot answer survives a sweep of
    cold ones); presigned URLs start again empty past their limit."""
    answers = AnswerCache(limit=2)
    for key in ("a", "b"):
        assert answers.put(key, key.encode()) == key.encode()
    assert answers.get("a") == b"a"  # used: "b" is now the least recent
    answers.put("c", b"c")
    assert (answers.get("a"), answers.get("b"), answers.get("c")) == (b"a", None, b"c")
    for n in range(10):
        answers.put(f"cold-{n}", b"x")
        assert answers.get("c") == b"c"
    assert len(answers) == 2
    urls = PresignCache(limit=1, clock=lambda: 0.0)
    urls.put("d1", "u1", 60)
    urls.put("d2", "u2", 60)
    assert (urls.get("d1"), urls.get("d2")) == (None, "u2")
