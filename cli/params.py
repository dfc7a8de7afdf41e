"""Parsing of repeated ``key=value`` arguments, metrics files and durations (usage errors
exit 1)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click


def key_values(pairs: Sequence[str], what: str) -> dict[str, str]:
    """``["team=nlp", "task=qa"]`` -> ``{"team": "nlp", "task": "qa"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} must look like KEY=VALUE", param_hint=what)
        out[key.strip()] = value.strip()
    return out


def labels_callback(
    _ctx: click.Context, param: click.Parameter, value: Sequence[str]
) -> dict[str, str]:
    """click callback for repeatable ``--label k=v``."""
    return key_values(value, f"'--{param.name}'")


def number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=what) from None
    if not math.isfinite(value):
        raise click.BadParameter(f"{text!r} is not a finite number", param_hint=what)
    return value


def metric_values(pairs: Sequence[str], what: str) -> dict[str, float]:
    """``["accuracy=0.91"]`` -> ``{"accuracy": 0.91}``."""
    return {k: number(v, what) for k, v in key_values(pairs, what).items()}


def load_metrics_file(path: Path) -> list[dict[str, Any]]:
    """Metric rows from an eval JSON file.

    Accepted: ``{"accuracy": 0.91, "eval": {"loss": 1.2}}`` (nested keys join with ``.``),
    a list of ``{"key", "value", "dataset"?, "split"?}`` rows, or either under ``"metrics"``.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="'--metrics'") from None
    if isinstance(data, Mapping) and "metrics" in data:
        data = data["metrics"]
    if isinstance(data, Mapping):
        return [{"key": k, "value": v} for k, v in _flatten(data, "", path).items()]
    if isinstance(data, list) and all(_is_row(r) for r in data):
        return [dict(r) for r in data]
    raise click.BadParameter(
        f"{path} must hold an object of numbers or a list of {{key, value}} rows",
        param_hint="'--metrics'",
    )


def _flatten(data: Mapping[str, Any], prefix: str, path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}.", path))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
        else:
            raise click.BadParameter(
                f"{path}: metric {name!r} is {value!r}, not a number", param_hint="'--metrics'"
            )
    return out


def _is_row(row: Any) -> bool:
    return (
        isinstance(row, Mapping) and isinstance(row.get("key"), str)
        and isinstance(row.get("value"), int | float) and not isinstance(row["value"], bool)
    )


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` or plain seconds (``"45"``) -> seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif value and _DURATION_RE.sub("", value) == "":
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(value))
    else:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 2h or 1h30m")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


class Duration(click.ParamType[float]):
    """A click parameter holding seconds, written as 90s / 30m / 2h / 1h30m / plain seconds."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return parse_duration(str(value), allow_zero=self.allow_zero)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
