"""Operations: ``webhook add|ls|rm|test|deliveries|redeliver``, ``gc``, ``retention``."""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import Duration


@click.group()
def webhook() -> None:
    """Webhook subscriptions of a namespace (admin)."""


@webhook.command("add")
@click.argument("namespace")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True,
              help="Event type to send (repeatable), e.g. version.pushed, rollout.aborted.")
@click.option("--secret", default=None, help="Signing secret whsec_... (default: generated).")
@click.option("--allow-private", is_flag=True,
              help="Target a private or loopback address; refused unless the server's "
                   "operator allows private targets (LORAREG_WEBHOOK_ALLOW_PRIVATE). "
                   "Link-local and cloud metadata addresses are always refused.")
@json_option
@pass_app
def add(app: App, namespace: str, url: str, events: tuple[str, ...], secret: str | None,
        allow_private: bool) -> None:
    """Subscribe URL to NAMESPACE's events; prints the signing secret once."""
    hook = app.client().add_webhook(namespace, url, list(events), secret=secret,
                                    allow_private=allow_private)
    if app.json:
        output.emit_json(hook)
        return
    app.say(f"webhook {hook.id} -> {hook.url} ({', '.join(hook.events)})")
    app.say(f"secret: {hook.secret}  (shown once: verify webhook-signature with it)")


@webhook.command("ls")
@click.argument("namespace")
@json_option
@pass_app
def ls(app: App, namespace: str) -> None:
    """List NAMESPACE's webhooks."""
    hooks = app.client().webhooks(namespace)
    if app.json:
        output.emit_json(hooks)
        return
    output.table(["ID", "URL", "EVENTS", "ACTIVE"], [
        [h.id, h.url, ",".join(h.events), h.active] for h in hooks])


@webhook.command("rm")
@click.argument("webhook_id", type=int)
@pass_app
def rm(app: App, webhook_id: int) -> None:
    """Deactivate a webhook (its deliveries stay inspectable)."""
    app.client().remove_webhook(webhook_id)
    app.say(f"webhook {webhook_id} removed")


@webhook.command("test")
@click.argument("webhook_id", type=int)
@json_option
@pass_app
def test(app: App, webhook_id: int) -> None:
    """Queue a signed ping event for a webhook."""
    result = app.client().test_webhook(webhook_id)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"ping queued (event {result.event_id})")


@webhook.command("deliveries")
@click.argument("webhook_id", type=int)
@json_option
@pass_app
def deliveries(app: App, webhook_id: int) -> None:
    """Recent deliveries of a webhook: status, attempts, last response."""
    rows = app.client().deliveries(webhook_id)
    if app.json:
        output.emit_json(rows)
        return
    output.table(["ID", "EVENT", "STATUS", "ATTEMPTS", "LAST", "ERROR"], [
        [d.id, d.event_id, d.status, d.attempts, d.last_status_code, output.short(d.last_error)]
        for d in rows])


@webhook.command("redeliver")
@click.argument("delivery_id", type=int)
@pass_app
def redeliver(app: App, delivery_id: int) -> None:
    """Send a delivery again (also a dead one)."""
    app.client().redeliver(delivery_id)
    app.say(f"delivery {delivery_id} queued again")


@click.command()
@click.option("--grace", type=Duration(allow_zero=True), default="24h", show_default=True,
              help="Keep blobs stored or offered within this long (e.g. 24h, 30m).")
@click.option("--dry-run", is_flag=True, help="Report what would go; delete nothing.")
@json_option
@pass_app
def gc(app: App, grace: float, dry_run: bool) -> None:
    """Delete blobs nothing refers to, older than the grace period; report bytes reclaimed."""
    report = app.client().gc(grace_seconds=int(grace), dry_run=dry_run)
    if app.json:
        output.emit_json(report)
        return
    verb = "would delete" if dry_run else "deleted"
    app.say(f"{verb} {len(report.deleted)} blob(s) and {report.orphans_deleted} "
            f"orphan object(s), {output.size(report.bytes_reclaimed)}; kept "
            f"{report.kept_referenced} referenced, {report.kept_recent} recent")


@click.group()
def retention() -> None:
    """Retention: keep the newest N versions of an adapter (off by default)."""


@retention.command("set")
@click.argument("adapter", metavar="NS/NAME")
@click.option("--keep-last", type=click.IntRange(min=1), default=None,
              help="Versions to keep (channels' versions are always kept); omit to turn off.")
@pass_app
def set_(app: App, adapter: str, keep_last: int | None) -> None:
    """Set or clear an adapter's retention."""
    app.client().set_retention(adapter, keep_last)
    app.say(f"{adapter}: keep last {keep_last}" if keep_last else f"{adapter}: keep all")


@retention.command("apply")
@click.option("--dry-run/--no-dry-run", default=True, show_default=True,
              help="Dry run first: report what would be yanked.")
@json_option
@pass_app
def apply(app: App, dry_run: bool) -> None:
    """Yank versions beyond each adapter's retention (not pointed at by a channel)."""
    report = app.client().apply_retention(dry_run=dry_run)
    if app.json:
        output.emit_json(report)
        return
    verb = "would yank" if dry_run else "yanked"
    app.say(f"{verb} {len(report.yanked)} version(s): {', '.join(report.yanked) or '-'}")
