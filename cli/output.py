"""Printing: JSON for pipelines, aligned plain-text tables for people (no dependency)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import click
from pydantic import BaseModel

from registry.units import human_size


def emit_json(data: Any) -> None:
    """Pretty JSON on stdout; models (alone, in lists or in dicts) as the API sends them."""
    click.echo(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows under headers in left-aligned columns separated by two spaces."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print ``label: value`` lines, labels aligned."""
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        click.echo(f"{key + ':':<{width}} {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return " ".join(str(value).split())


size = human_size  # ``1536`` -> ``1.5 KiB``


def when(moment: datetime | str | None) -> str:
    """A time (or its ISO text, e.g. ``2024-05-01T12:34:56.789+00:00``) -> ``2024-05-01 12:34``
    (as the API sent it: UTC)."""
    if not moment:
        return "-"
    if isinstance(moment, datetime):
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.replace("T", " ")[:16]


def short(text: str | None, width: int = 40) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
