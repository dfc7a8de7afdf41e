"""Parameter types and formatting shared by the channel, rollout and export commands."""

from __future__ import annotations

from typing import Any

import click

from cli import output, params


class Duration(params.Duration):
    """A duration option in whole seconds (``30s``, ``10m``, ``1h30m``): rollout intervals
    and deadlines are kept to the second."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        seconds = super().convert(value, param, ctx)
        if seconds < 1 or seconds != int(seconds):
            self.fail(f"{value!r} must be a whole number of seconds, at least 1s", param, ctx)
        return int(seconds)


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
