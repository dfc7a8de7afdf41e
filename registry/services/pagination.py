"""Keyset (cursor) pagination shared by every list.

A cursor is an opaque URL-safe base64 of ``[sort_value, id]`` of the last row served; the next
page continues strictly after it in ``(sort_value, id)`` order, so rows inserted meanwhile never
shift pages and no row is served twice.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import QueryableAttribute, Session

from registry.errors import BadRequest

T = TypeVar("T")
# A sort key: a mapped attribute or any SQL expression.
SortKey = ColumnElement[Any] | QueryableAttribute[Any]
MAX_LIMIT = 500


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def encode_cursor(value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = {"dt": value.isoformat()}
    raw = json.dumps([value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = json.loads(raw)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise BadRequest("cursor is malformed; pass back the next_cursor you were given") from exc
    if isinstance(value, dict) and "dt" in value:
        value = datetime.fromisoformat(value["dt"])
    if not isinstance(row_id, int):
        raise BadRequest("cursor is malformed; pass back the next_cursor you were given")
    return value, row_id


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def paginate(
    session: Session,
    stmt: Select[Any],
    sort: SortKey,
    id_col: SortKey,
    *,
    descending: bool,
    cursor: str | None,
    limit: int,
    sort_value: Any = None,
    computed: bool = False,
) -> Page[Any]:
    """Run ``stmt`` ordered by ``(sort, id)`` from ``cursor``; ``sort_value(row)`` reads the
    sort key of a row for the next cursor (default: the id). ``computed``: ``sort`` is an
    expression (e.g. a metric subquery) that ``stmt`` also selects as its second column."""
    check_limit(limit)
    if cursor:
        value, last_id = decode_cursor(cursor)
        if descending:
            stmt = stmt.where(or_(sort < value, and_(sort == value, id_col < last_id)))
        else:
            stmt = stmt.where(or_(sort > value, and_(sort == value, id_col > last_id)))
    order = (sort.desc(), id_col.desc()) if descending else (sort.asc(), id_col.asc())
    stmt = stmt.order_by(*order).limit(limit + 1)
    pairs = [(r[0], r[1]) for r in session.execute(stmt)] if computed else [
        (r, None) for r in session.scalars(stmt)]
    next_cursor = None
    if len(pairs) > limit:
        pairs = pairs[:limit]
        last, computed_key = pairs[-1]
        key = computed_key if computed else sort_value(last) if sort_value else last.id
        next_cursor = encode_cursor(key, last.id)
    return Page([item for item, _ in pairs], next_cursor)


def paginate_by_id(
    session: Session,
    stmt: Select[Any],
    id_col: SortKey,
    *,
    cursor: str | None,
    limit: int,
    descending: bool = True,
) -> Page[Any]:
    return paginate(
        session, stmt, id_col, id_col, descending=descending, cursor=cursor, limit=limit
    )
