"""Canary rollouts: ``rollout status|pause|resume|abort|watch``; and ``live report``, which
feeds the live gates (for tests, demos and simple routers)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.channel_params import DURATION, seconds, version_of, weight
from cli.params import metric_values
from registry.client import RolloutOut, explicit_version
from registry.errors import Conflict, NotFound, RegistryError
from registry.refs import parse_ref
from registry.statuses import RolloutStatus

ROLLOUT_ARG = "ID|NS/NAME:CHANNEL"


def rollout_id(app: App, target: str) -> int:
    """A rollout id, or the active (else the most recent) rollout of a channel reference."""
    if target.isdigit():
        return int(target)
    ref = parse_ref(target)
    if ref.channel is None:
        raise click.BadParameter(f"{target!r} is neither a rollout id nor ns/name:channel",
                                 param_hint="ROLLOUT")
    chan = app.client().channel(target)
    if chan.rollout_id is not None:
        return chan.rollout_id
    for event in app.client().history(target):
        if event.rollout_id is not None:
            return event.rollout_id
    raise NotFound(f"channel {target} has had no rollout")


@click.group()
def rollout() -> None:
    """Canary rollouts: status, pause, resume, abort, watch."""


@rollout.command()
@click.argument("target", metavar=ROLLOUT_ARG)
@json_option
@pass_app
def status(app: App, target: str) -> None:
    """Show a rollout (by id, or a channel's current or last one): steps, weights and every
    gate evaluation."""
    client = app.client()
    data = client.rollout(rollout_id(app, target))
    evaluations = client.rollout_evaluations(data.id)
    if app.json:
        output.emit_json({**data.model_dump(mode="json"), "evaluations": evaluations})
        return
    output.fields(_summary(data))
    click.echo("")
    output.table(["STEP", "WEIGHT", "STATE"],
                 [[f"{i + 1}/{len(data.steps)}", f"{pct}%", _step_state(data, i)]
                  for i, pct in enumerate(data.steps)])
    if evaluations:
        click.echo("")
        output.table(
            ["TIME", "STEP", "GATE", "VALUE", "THRESHOLD", "VERDICT", "DETAIL"],
            [[output.when(e.evaluated_at), e.step_index + 1, e.gate, e.value, e.threshold,
              e.verdict, output.short(e.detail, 60)] for e in evaluations])


def _summary(data: RolloutOut) -> list[tuple[str, Any]]:
    return [
        ("rollout", data.id),
        ("channel", data.channel),
        ("version", version_of(data.version)),
        ("status", f"{data.status}{_paused(data)}"),
        ("step", _step_text(data)),
        ("weight", weight(data.weight_bp)),
        ("interval", seconds(data.interval_seconds)),
        ("gates", "; ".join(data.gates) or None),
        ("failures", f"{data.failures} (max {data.max_failures})"),
        ("next check", output.when(data.next_eval_at)),
        ("deadline", output.when(data.deadline_at)),
        ("started", f"{output.when(data.created_at)} by {data.created_by}"),
        ("finished", output.when(data.finished_at)),
        ("reason", data.reason or None),
    ]


def _step_text(data: RolloutOut) -> str:
    index = data.step_index
    if index < 0:
        return "not started"
    return f"{index + 1}/{len(data.steps)} ({data.steps[index]}%)"


# What the step a rollout stands on is doing, by its status.
STEP_STATES = {RolloutStatus.PROGRESSING: "baking", RolloutStatus.PAUSED: "paused",
               RolloutStatus.ABORTED: "aborted here"}


def _step_state(data: RolloutOut, index: int) -> str:
    current, state = data.step_index, data.status
    if state == RolloutStatus.PROMOTED or index < current:
        return "passed"
    if index > current:
        return "-"
    return STEP_STATES.get(state, str(state))


def _control(app: App, target: str, action: str, reason: str) -> None:
    client = app.client()
    number = rollout_id(app, target)
    handler = {"pause": client.pause_rollout, "resume": client.resume_rollout,
               "abort": client.abort_rollout}[action]
    data = handler(number, reason)
    if app.json:
        output.emit_json(data)
        return
    app.say(f"rollout {data.id} ({data.channel} {version_of(data.version)}): "
            f"{data.status} at {weight(data.weight_bp)}")


@rollout.command()
@click.argument("target", metavar=ROLLOUT_ARG)
@click.option("--reason", default="", help="Why (recorded in the channel history).")
@json_option
@pass_app
def pause(app: App, target: str, reason: str) -> None:
    """Hold a rollout's canary at its current weight until resumed."""
    _control(app, target, "pause", reason)


@rollout.command()
@click.argument("target", metavar=ROLLOUT_ARG)
@click.option("--reason", default="", help="Why (recorded in the channel history).")
@json_option
@pass_app
def resume(app: App, target: str, reason: str) -> None:
    """Resume a paused rollout (its step bakes one more interval)."""
    _control(app, target, "resume", reason)


@rollout.command()
@click.argument("target", metavar=ROLLOUT_ARG)
@click.option("--reason", default="", help="Why (recorded in the channel history).")
@json_option
@pass_app
def abort(app: App, target: str, reason: str) -> None:
    """Abort a rollout: the canary stops at once, the stable version keeps serving."""
    _control(app, target, "abort", reason)


@rollout.command()
@click.argument("target", metavar=ROLLOUT_ARG)
@click.option("--timeout", type=DURATION, default=None,
              help="Stop waiting after this long (exit 6) [default: wait until it ends].")
@json_option
@pass_app
def watch(app: App, target: str, timeout: int | None) -> None:
    """Follow a rollout until it ends: exit 0 when promoted, 3 when aborted.

    Progress (steps, pauses, failed gates) is shown on a terminal; the final state is printed
    on stdout (--json: the rollout).
    """
    number = rollout_id(app, target)
    shown: list[tuple[Any, ...]] = []
    live = not (app.quiet or app.json) and sys.stderr.isatty()

    def on_poll(data: RolloutOut) -> None:
        state = (data.status, data.paused_by, data.step_index, data.failures)
        if live and (not shown or shown[-1] != state):
            click.echo(f"  {data.status}{_paused(data)}: step {_step_text(data)}, "
                       f"weight {weight(data.weight_bp)}, failures {data.failures}", err=True)
        shown.append(state)

    data = app.client().wait_rollout(number, timeout=timeout, progress=on_poll)
    if app.json:
        output.emit_json(data)
    if data.status == RolloutStatus.PROMOTED:
        if not app.json:
            app.say(f"rollout {number} promoted: {data.channel} serves "
                    f"{version_of(data.version)}")
        return
    if data.status == RolloutStatus.ABORTED:
        raise _quiet_json(app, Conflict(f"rollout {number} on {data.channel} was aborted: "
                                        f"{data.reason}", rollout_id=number,
                                        status=data.status.value))
    raise _quiet_json(app, RegistryError(
        f"rollout {number} is still {data.status} at {weight(data.weight_bp)} after "
        f"{seconds(timeout)}; stopped waiting", rollout_id=number, status=data.status.value))


def _paused(data: RolloutOut) -> str:
    return f" (by {data.paused_by})" if data.paused_by else ""


def _quiet_json(app: App, err: RegistryError) -> RegistryError:
    """The rollout was already printed as JSON: report only the error line, not a second
    JSON document."""
    app.json = False
    return err


# ------------------------------------------------------------------------------ live ...


@click.group()
def live() -> None:
    """Live serving measurements that rollout gates (live.KEY) are judged on."""


@live.command()
@click.argument("ref", metavar="NS/NAME@N")
@click.option("--requests", type=click.IntRange(min=0), required=True,
              help="Requests served by this version in the period.")
@click.option("--errors", type=click.IntRange(min=0), default=0, show_default=True,
              help="How many of them failed.")
@click.option("--value", "values", multiple=True, metavar="K=V",
              help="A measured value, e.g. latency_p95_ms=123 (repeatable).")
@json_option
@pass_app
def report(app: App, ref: str, requests: int, errors: int, values: tuple[str, ...]) -> None:
    """Report live measurements of version REF (what a router would send, batched)."""
    version = explicit_version(ref)
    body = {"adapter": version.adapter, "version": version.version, "requests": requests,
            "errors": errors, "values": metric_values(values, "'--value'")}
    accepted = app.client().report_live([body])
    if app.json:
        output.emit_json({"accepted": accepted})
        return
    app.say(f"reported {requests} requests, {errors} errors for {ref}")


COMMANDS = (rollout, live)
