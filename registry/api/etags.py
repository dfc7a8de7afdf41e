"""Conditional requests: does an ``If-None-Match`` header name this ETag? (blobs, resolve)"""

from __future__ import annotations


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """An ``If-None-Match`` header names ``etag``: weak comparison (RFC 9110 8.8.3.2), lists
    and ``*`` included."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags
