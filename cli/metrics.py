"""``metrics log`` and ``metrics show``: eval results recorded against a version."""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import metric_values


@click.group()
def metrics() -> None:
    """Record and read eval metrics of a version."""


@metrics.command("log")
@click.argument("ref", metavar="REF")
@click.argument("values", nargs=-1, required=True, metavar="K=V...")
@click.option("--dataset", help="Dataset the values were measured on.")
@click.option("--split", help="Split of the dataset (e.g. test).")
@json_option
@pass_app
def log(app: App, ref: str, values: tuple[str, ...], dataset: str | None,
        split: str | None) -> None:
    """Record metric values on version REF, e.g. ``metrics log acme/bot@3 accuracy=0.91``."""
    rows = metric_values(values, "K=V")
    result = app.client().log_metrics(ref, rows, dataset=dataset, split=split)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"recorded {len(rows)} metric value(s) on {ref}")


@metrics.command("show")
@click.argument("ref", metavar="REF")
@json_option
@pass_app
def show(app: App, ref: str) -> None:
    """Show every recorded metric value of version REF, oldest first."""
    items = app.client().metric_history(ref)
    if app.json:
        output.emit_json(items)
        return
    if not items:
        app.note(f"no metrics recorded on {ref}")
        return
    output.table(
        ["KEY", "VALUE", "DATASET", "SPLIT", "RECORDED", "BY"],
        [[m.key, m.value, m.dataset, m.split, output.when(m.recorded_at), m.recorded_by]
         for m in items],
    )
