"""``audit``: the append-only log of every mutation."""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app


@click.command()
@click.option("--namespace", help="Only events in this namespace.")
@click.option("--target", help="Only events about this target (e.g. acme/bot@3).")
@click.option("--action", help="Only this action (e.g. version.pushed).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many events.")
@json_option
@pass_app
def audit(app: App, namespace: str | None, target: str | None, action: str | None,
          limit: int) -> None:
    """Show audit events, newest first."""
    rows = list(app.client().audit(namespace=namespace, target=target, action=action,
                                   limit=limit))
    if app.json:
        output.emit_json(rows)
        return
    output.table(
        ["ID", "TIME", "ACTOR", "ACTION", "TARGET"],
        [[r.id, output.when(r.created_at), r.actor, r.action, r.target] for r in rows],
    )
