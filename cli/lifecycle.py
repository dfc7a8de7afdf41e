"""Version lifecycle: ``yank`` and ``unyank``."""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app


@click.command()
@click.argument("ref", metavar="NS/NAME@N")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@json_option
@pass_app
def yank(app: App, ref: str, reason: str) -> None:
    """Yank a version: it drops out of 'latest' but stays pullable by number."""
    result = app.client().yank(ref, reason)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"yanked {result.ref}")


@click.command()
@click.argument("ref", metavar="NS/NAME@N")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@json_option
@pass_app
def unyank(app: App, ref: str, reason: str) -> None:
    """Undo the yank of a version."""
    result = app.client().unyank(ref, reason)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"unyanked {result.ref}")
