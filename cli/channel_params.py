"""Parameter types and formatting shared by the channel, rollout and export commands."""

from __future__ import annotations

import re
from typing import Any

import click

from cli import output

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"10m"``, ``"2h"``, ``"1h30m"``, ``"1d"`` -> whole seconds (> 0)."""
    compact = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in DURATION_RE.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h or 1h30m")
    if total < 1 or total != int(total):
        raise ValueError(f"{text!r} must be a whole number of seconds, at least 1s")
    return int(total)


class Duration(click.ParamType[int, Any]):
    """A duration option: ``30s``, ``10m``, ``2h``, ``1h30m`` or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Steps(click.ParamType[list[int], Any]):
    """Comma-separated canary weights in percent, e.g. ``5,25,50,100``."""

    name = "steps"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            steps = [int(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            self.fail(f"{value!r} must be comma-separated whole percentages, e.g. 5,25,50,100",
                      param, ctx)
        if not steps:
            self.fail("name at least one step (the last must be 100)", param, ctx)
        return steps


DURATION = Duration()
STEPS = Steps()


def seconds(value: int | None) -> str:
    """``5400`` -> ``1h30m``; ``None`` -> ``-``."""
    if value is None:
        return "-"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, value = divmod(value, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def weight(bp: int | None) -> str:
    """Basis points as a percentage: ``500`` -> ``5%``, ``1250`` -> ``12.5%``."""
    return "-" if bp is None else f"{bp / 100:g}%"


def version_of(number: int | None) -> str:
    return "-" if number is None else f"@{number}"


def echo_problems(problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"  - {output.short(problem, 200)}")
