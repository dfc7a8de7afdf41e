"""Browsing: ``ls`` (adapters or versions), ``show`` (one version), ``namespace``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import labels_callback
from registry.client import AdapterOut, BaseRefOut, VersionOut
from registry.statuses import VersionStatus

Row = TypeVar("Row", bound=BaseModel)


@click.command()
@click.argument("target", required=False, metavar="[NAMESPACE | NAMESPACE/ADAPTER]")
@click.option("--label", "labels", multiple=True, callback=labels_callback, metavar="K=V",
              help="Only items with this label (repeatable).")
@click.option("--status", type=click.Choice([s.value for s in VersionStatus]),
              help="Versions: by status.")
@click.option("--metric", "metric_filters", multiple=True, metavar="EXPR",
              help="Versions: metric filter such as 'accuracy>=0.9' (repeatable).")
@click.option("--base", metavar="HUB_ID[@REV]",
              help="Versions trained on this base; with --search or --adapters: adapters "
                   "with such a version.")
@click.option("--search", metavar="TEXT",
              help="Adapters whose name or description contains TEXT (any case).")
@click.option("--adapters", "adapters_only", is_flag=True,
              help="List adapters even when --base is given.")
@click.option("--sort", help="adapters: updated_at|name; versions: version|created_at|metric.KEY")
@click.option("--order", type=click.Choice(["asc", "desc"]), help="Versions: sort order.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def ls(
    app: App, target: str | None, labels: dict[str, str], status: str | None,
    metric_filters: tuple[str, ...], base: str | None, search: str | None,
    adapters_only: bool, sort: str | None, order: str | None, limit: int | None,
) -> None:
    """List adapters, or versions.

    With NAMESPACE/ADAPTER, list that adapter's versions. Otherwise list adapters (of
    NAMESPACE if given) -- unless a version filter (--status, --metric, --base, --order)
    is given, which lists matching versions across adapters. --search (or --adapters)
    always lists adapters, and then --base keeps those with a version on that base.
    """
    client = app.client()
    adapter = target if target and "/" in target else None
    namespace = None if adapter else target
    if search is not None or adapters_only:
        if adapter or status or metric_filters or order:
            raise click.UsageError("--search and --adapters list adapters: give a NAMESPACE "
                                   "(not an adapter) and no --status, --metric or --order")
        adapters = list(client.adapters(namespace=namespace, label=labels, q=search,
                                        base=base, sort=sort, limit=limit))
        _print(app, adapters, _adapter_table)
    elif adapter or status or metric_filters or base or order:
        versions = list(client.versions(
            adapter, namespace=namespace, status=status, labels=labels, base=base,
            metric_filters=metric_filters, sort=sort, order=order, limit=limit,
        ))
        _print(app, versions, _version_table)
    else:
        adapters = list(client.adapters(namespace=target, label=labels, sort=sort, limit=limit))
        _print(app, adapters, _adapter_table)


def _print(app: App, rows: Sequence[Row], human: Callable[[Sequence[Row]], None]) -> None:
    if app.json:
        output.emit_json(rows)
    elif rows:
        human(rows)
    else:
        app.note("nothing found")


def _adapter_table(rows: Iterable[AdapterOut]) -> None:
    output.table(
        ["ADAPTER", "LATEST", "LABELS", "UPDATED", "DESCRIPTION"],
        [[r.name, r.latest_version, r.labels, output.when(r.updated_at),
          output.short(r.description)] for r in rows],
    )


def _version_table(rows: Iterable[VersionOut]) -> None:
    output.table(
        ["VERSION", "STATUS", "BASE", "COMPAT", "METRICS", "SIZE", "CREATED"],
        [[r.ref, r.status, _base(r.base), r.base.compat_status, r.metrics,
          output.size(r.total_size), output.when(r.created_at)] for r in rows],
    )


def _base(base: BaseRefOut) -> str:
    return f"{base.hub_id}@{base.revision[:12]}"


@click.command()
@click.argument("ref", metavar="REF")
@json_option
@pass_app
def show(app: App, ref: str) -> None:
    """Show one version: REF is ns/name@N, ns/name@latest or ns/name (= latest)."""
    v = app.client().version(ref)
    if app.json:
        output.emit_json(v)
        return
    base = v.base
    output.fields([
        ("version", v.ref),
        ("status", v.status if v.status != VersionStatus.YANKED
         else f"{v.status} ({v.yank_reason})"),
        ("manifest", v.manifest_digest),
        ("base", f"{base.hub_id}@{base.revision}"),
        ("compat", base.compat_status),
        ("fingerprint", base.fingerprint),
        ("peft", _peft_summary(v.peft_config or {})),
        ("metrics", v.metrics),
        ("labels", v.labels),
        ("provenance", v.provenance),
        ("pushed by", v.pushed_by),
        ("created", output.when(v.created_at)),
        ("size", output.size(v.total_size)),
    ])
    click.echo("")
    output.table(["FILE", "SIZE", "SHA256"],
                 [[f.path, output.size(f.size), f.digest] for f in v.files])


def _peft_summary(config: Mapping[str, Any]) -> str:
    keys = ("peft_type", "r", "lora_alpha", "target_modules")
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config) or "-"


@click.group()
def namespace() -> None:
    """Namespaces: the unit of ownership and token scope."""


@namespace.command("ls")
@json_option
@pass_app
def namespace_ls(app: App) -> None:
    """List namespaces."""
    rows = app.client().namespaces()
    if app.json:
        output.emit_json(rows)
        return
    output.table(["NAMESPACE", "CREATED", "DESCRIPTION"],
                 [[r.name, output.when(r.created_at), output.short(r.description)] for r in rows])


@namespace.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the namespace is for.")
@json_option
@pass_app
def namespace_create(app: App, name: str, description: str) -> None:
    """Create a namespace (admin token)."""
    created = app.client().create_namespace(name, description)
    if app.json:
        output.emit_json(created)
    else:
        app.say(f"created namespace {created.name}")
