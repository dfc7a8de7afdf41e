"""Browsing: ``ls`` (adapters or versions), ``show`` (one version), ``namespace``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import labels_callback


@click.command()
@click.argument("target", required=False, metavar="[NAMESPACE | NAMESPACE/ADAPTER]")
@click.option("--label", "labels", multiple=True, callback=labels_callback, metavar="K=V",
              help="Only items with this label (repeatable).")
@click.option("--status", type=click.Choice(["active", "yanked"]), help="Versions: by status.")
@click.option("--metric", "metric_filters", multiple=True, metavar="EXPR",
              help="Versions: metric filter such as 'accuracy>=0.9' (repeatable).")
@click.option("--base", metavar="HUB_ID@REV", help="Versions: trained on this base.")
@click.option("--sort", help="adapters: updated_at|name; versions: version|created_at|metric.KEY")
@click.option("--order", type=click.Choice(["asc", "desc"]), help="Versions: sort order.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def ls(
    app: App, target: str | None, labels: dict[str, str], status: str | None,
    metric_filters: tuple[str, ...], base: str | None, sort: str | None, order: str | None,
    limit: int | None,
) -> None:
    """List adapters, or versions.

    With NAMESPACE/ADAPTER, list that adapter's versions. Otherwise list adapters (of
    NAMESPACE if given) -- unless a version filter (--status, --metric, --base, --order)
    is given, which lists matching versions across adapters.
    """
    client = app.client()
    adapter = target if target and "/" in target else None
    namespace = None if adapter else target
    if adapter or status or metric_filters or base or order:
        rows = list(client.versions(
            adapter, namespace=namespace, status=status, labels=labels, base=base,
            metric_filters=metric_filters, sort=sort, order=order, limit=limit,
        ))
        _print(app, rows, _version_table)
    else:
        rows = list(client.adapters(namespace=target, label=labels, sort=sort, limit=limit))
        _print(app, rows, _adapter_table)


def _print(app: App, rows: list[dict[str, Any]], human: Any) -> None:
    if app.json:
        output.emit_json(rows)
    elif rows:
        human(rows)
    else:
        app.note("nothing found")


def _adapter_table(rows: Iterable[Mapping[str, Any]]) -> None:
    output.table(
        ["ADAPTER", "LATEST", "LABELS", "UPDATED", "DESCRIPTION"],
        [[r["name"], r.get("latest_version"), r.get("labels"), output.when(r.get("updated_at")),
          output.short(r.get("description"))] for r in rows],
    )


def _version_table(rows: Iterable[Mapping[str, Any]]) -> None:
    output.table(
        ["VERSION", "STATUS", "BASE", "COMPAT", "METRICS", "SIZE", "CREATED"],
        [[r["ref"], r.get("status"), _base(r.get("base")),
          (r.get("base") or {}).get("compat_status"), r.get("metrics"),
          output.size(r.get("total_size")), output.when(r.get("created_at"))] for r in rows],
    )


def _base(base: Mapping[str, Any] | None) -> str:
    if not base:
        return "-"
    return f"{base.get('hub_id')}@{str(base.get('revision'))[:12]}"


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
    base = v.get("base") or {}
    output.fields([
        ("version", v["ref"]),
        ("status", v["status"] if v.get("status") != "yanked"
         else f"yanked ({v.get('yank_reason')})"),
        ("manifest", v.get("manifest_digest")),
        ("base", f"{base.get('hub_id')}@{base.get('revision')}"),
        ("compat", base.get("compat_status")),
        ("fingerprint", base.get("fingerprint")),
        ("peft", _peft_summary(v.get("peft_config") or {})),
        ("metrics", v.get("metrics")),
        ("labels", v.get("labels")),
        ("provenance", v.get("provenance")),
        ("pushed by", v.get("pushed_by")),
        ("created", output.when(v.get("created_at"))),
        ("size", output.size(v.get("total_size"))),
    ])
    click.echo("")
    output.table(["FILE", "SIZE", "SHA256"],
                 [[f["path"], output.size(f["size"]), f["digest"]] for f in v.get("files", [])])


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
                 [[r["name"], output.when(r.get("created_at")), output.short(r.get("description"))]
                  for r in rows])


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
        app.say(f"created namespace {created.get('name', name)}")
