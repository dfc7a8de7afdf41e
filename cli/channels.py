"""Channels: ``promote``, ``rollback``, ``history``, ``check``, ``resolve`` and
``channel set|show|ls``.

Every channel change is a compare-and-swap on the channel's revision: without
``--expect-revision`` the command reads the channel first and sends the revision it saw, so two
pipelines promoting at once get one success and one conflict (exit 3).
"""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.channel_params import DURATION, STEPS, echo_problems, seconds, version_of, weight
from registry.client import ChannelEventOut, PromoteOut, channel_ref
from registry.errors import IncompatiblePool, InvalidAdapter

PROFILES = ("any", "vllm", "merged")


@click.command()
@click.argument("ref", metavar="NS/NAME@N")
@click.option("--channel", "-c", required=True, metavar="NAME", help="Channel, e.g. prod.")
@click.option("--now", is_flag=True, help="Make it stable at once (no canary).")
@click.option("--steps", type=STEPS, default="5,25,50,100", show_default=True,
              help="Canary weights in percent, ending at 100.")
@click.option("--interval", type=DURATION, default="10m", show_default=True,
              help="How long each step bakes before its gates are evaluated (30s, 10m, 1h).")
@click.option("--gate", "gates", multiple=True, metavar="EXPR",
              help="A gate, e.g. 'eval.accuracy >= stable - 0.01' or "
                   "'live.error_rate <= 0.02' (repeatable; all must pass).")
@click.option("--max-failures", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Failed evaluations tolerated (each re-bakes the step) before aborting.")
@click.option("--deadline", type=DURATION, default=None,
              help="Abort if not promoted within this time (e.g. 2h).")
@click.option("--min-requests", type=click.IntRange(min=0), default=1, show_default=True,
              help="Live requests per version and step before live gates are judged.")
@click.option("--new-base", is_flag=True,
              help="Allow a version trained on another base than the channel serves.")
@click.option("--reason", default="", help="Why (recorded in the channel history).")
@click.option("--expect-revision", type=click.IntRange(min=0), default=None,
              help="Fail with exit 3 unless the channel is at this revision "
                   "[default: the revision read just before].")
@click.option("--wait-loaded", is_flag=True,
              help="Then wait until every live replica of the pools bound to the channel "
                   "reports the version loaded; exit 6 naming those that did not, and why, "
                   "after --timeout.")
@click.option("--timeout", type=DURATION, default="5m", show_default=True,
              help="How long --wait-loaded waits.")
@json_option
@pass_app
def promote(
    app: App, ref: str, channel: str, now: bool, steps: list[int], interval: int,
    gates: tuple[str, ...], max_failures: int, deadline: int | None, min_requests: int,
    new_base: bool, reason: str, expect_revision: int | None, wait_loaded: bool,
    timeout: float,
) -> None:
    """Put version REF on a channel: at once (--now) or as a canary rollout.

    A canary starts at the first step's weight; the rollout controller (in the workers)
    evaluates the gates after each interval and moves to the next step, promotes after the
    last one, or aborts (the stable version keeps serving). Prints the rollout id and the
    channel revision; --json prints {channel, rollout} (and, with --wait-loaded, the pools'
    statuses as "fleet").
    """
    client = app.client()
    result = client.promote(
        ref, channel, now=now, steps=steps, interval_seconds=interval, gates=list(gates),
        max_failures=max_failures, deadline_seconds=deadline, min_requests=min_requests,
        new_base=new_base, reason=reason, expect_revision=expect_revision,
    )
    target = f"{result.channel.adapter}:{result.channel.name}"
    if not app.json:
        _promoted(app, ref, target, result)
    if not wait_loaded:
        if app.json:
            output.emit_json(result)
        return
    # The version the promotion put on the channel (a rollout's candidate, else the stable).
    number = result.rollout.version if result.rollout else result.channel.stable
    name = client.served_name(f"{result.channel.adapter}@{number}")
    app.note(f"waiting for every live replica of the pools serving {target} to load {name}")
    fleet = client.wait_loaded(target, name, timeout)
    if app.json:
        output.emit_json({**result.model_dump(mode="json"), "fleet": fleet})
        return
    replicas = sum(r.live for s in fleet for r in s.replicas)
    app.say(f"{name} loaded on {replicas} live replica(s) of {', '.join(s.pool for s in fleet)}")


def _promoted(app: App, ref: str, target: str, result: PromoteOut) -> None:
    chan, rollout = result.channel, result.rollout
    if rollout is None:
        app.say(f"promoted {ref} to {target} (channel revision {chan.revision})")
        return
    app.say(f"rollout {rollout.id} started: {ref} on {target} at "
            f"{weight(rollout.weight_bp)}, steps {','.join(map(str, rollout.steps))} "
            f"every {seconds(rollout.interval_seconds)} (channel revision {chan.revision})")
    app.note(f"follow it with: lorareg rollout watch {rollout.id}")


@click.command()
@click.argument("ref", metavar="NS/NAME:CHANNEL")
@click.option("--to", "to_version", type=click.IntRange(min=1), default=None, metavar="N",
              help="Version to make stable [default: the previous stable version].")
@click.option("--reason", default="", help="Why (recorded in the channel history).")
@click.option("--expect-revision", type=click.IntRange(min=0), default=None,
              help="Fail with exit 3 unless the channel is at this revision.")
@json_option
@pass_app
def rollback(app: App, ref: str, to_version: int | None, reason: str,
             expect_revision: int | None) -> None:
    """Make the previous (or the --to) version stable again on channel REF, in one change.

    A running canary is aborted as part of the same change.
    """
    before = None if expect_revision is not None else app.client().channel(ref)
    result = app.client().rollback(
        ref, to_version, reason, expect_revision if before is None else before.revision)
    if app.json:
        output.emit_json(result)
        return
    was = f" (was {version_of(before.stable)})" if before else ""
    app.say(f"rolled back {ref} to {version_of(result.stable)}{was}; channel revision "
            f"{result.revision}")


@click.command()
@click.argument("ref", metavar="NS/NAME:CHANNEL")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N events.")
@json_option
@pass_app
def history(app: App, ref: str, limit: int | None) -> None:
    """Every change of channel REF, newest first: who, when, from -> to, canary, why."""
    events = list(app.client().history(ref, limit=limit))
    if app.json:
        output.emit_json(events)
        return
    output.table(
        ["TIME", "REV", "ACTOR", "ACTION", "FROM -> TO", "CANARY/WEIGHT", "REASON"],
        [[output.when(e.created_at), e.revision, e.actor, e.action,
          _move(e), _canary(e), output.short(e.reason, 60)] for e in events],
    )


def _move(event: ChannelEventOut) -> str:
    if event.from_stable is None and event.to_stable is None:
        return "-"
    return f"{version_of(event.from_stable)} -> {version_of(event.to_stable)}"


def _canary(event: ChannelEventOut) -> str:
    if event.canary is None:
        return "-"
    return f"{version_of(event.canary)} {weight(event.canary_weight_bp)}"


@click.command()
@click.argument("ref", metavar="REF")
@click.option("--profile", type=click.Choice(PROFILES), default="vllm", show_default=True,
              help="Serving profile to check against (vLLM's own defaults for vllm).")
@click.option("--pool", default=None, metavar="NS/POOL",
              help="Check against a serving pool instead: its base, engine settings and "
                   "desired set (the checks of a promotion onto a channel it serves).")
@json_option
@pass_app
def check(app: App, ref: str, profile: str, pool: str | None) -> None:
    """Could a serving profile (or --pool) load version REF (ns/name@N, @latest or
    ns/name:channel)?

    Exit 0 when it can; exit 4 with the problems listed when it cannot. Nothing changes.
    """
    if pool is not None:
        _check_pool(app, ref, pool)
        return
    result = app.client().check(ref, profile)
    if not result.ok:
        if not app.json:  # with --json the problem document below carries the list
            echo_problems(result.problems)
        raise InvalidAdapter(
            f"{result.ref} cannot be served by profile {profile}: " + "; ".join(result.problems),
            ref=result.ref, profile=profile, ok=False, problems=result.problems)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"{result.ref} can be served by profile {profile}")


def _check_pool(app: App, ref: str, pool: str) -> None:
    result = app.client().check_pool(ref, pool)
    if not result.ok:
        if not app.json:
            echo_problems(result.problems)
        raise IncompatiblePool(
            f"{result.ref} cannot be served by pool {pool}: " + "; ".join(result.problems),
            ref=result.ref, pool=pool, ok=False, problems=result.problems)
    if app.json:
        output.emit_json(result)
    else:
        app.say(f"{result.ref} can be served by pool {pool} as {result.served_name}")


@click.command()
@click.argument("ref", metavar="NS/NAME:CHANNEL")
@click.option("--key", default="", help="Request key (sticky: one key, one version).")
@json_option
@pass_app
def resolve(app: App, ref: str, key: str) -> None:
    """Which version serves request KEY on channel REF, the name to send the engine for it
    (``served_name``: one per content, never reused), and where its files are."""
    result = app.client().resolve(ref, key)
    if app.json:
        output.emit_json(result)
        return
    app.say(f"{result.ref}{' (canary)' if result.canary else ''}  "
            f"manifest {result.manifest_digest[:12]}  served as {result.served_name}")
    output.table(["PATH", "SIZE", "SHA256", "URL"],
                 [[f.path, output.size(f.size), f.digest[:12], f.url] for f in result.files])


# --------------------------------------------------------------------------- channel ...


@click.group()
def channel() -> None:
    """Channels of an adapter: serving profile, protection, state."""


@channel.command("set")
@click.argument("ref", metavar="NS/NAME:CHANNEL")
@click.option("--profile", type=click.Choice(PROFILES), default=None,
              help="What the serving stack can load: promotions are checked against it.")
@click.option("--protected/--unprotected", default=None,
              help="Only admins may change a protected channel (setting it needs admin).")
@click.option("--expect-revision", type=click.IntRange(min=0), default=None,
              help="Fail with exit 3 unless the channel is at this revision.")
@json_option
@pass_app
def channel_set(app: App, ref: str, profile: str | None, protected: bool | None,
                expect_revision: int | None) -> None:
    """Create channel REF, or change its serving profile or protection."""
    channel_ref(ref)
    result = app.client().configure_channel(ref, profile, protected, expect_revision)
    if app.json:
        output.emit_json(result)
        return
    app.say(f"{ref}: profile {result.profile}, "
            f"{'protected' if result.protected else 'unprotected'} "
            f"(channel revision {result.revision})")


@channel.command("show")
@click.argument("ref", metavar="NS/NAME:CHANNEL")
@json_option
@pass_app
def channel_show(app: App, ref: str) -> None:
    """Show channel REF: stable, canary and weight, rollout, profile, revision."""
    result = app.client().channel(ref)
    if app.json:
        output.emit_json(result)
        return
    output.fields([
        ("channel", f"{result.adapter}:{result.name}"),
        ("stable", version_of(result.stable)),
        ("canary", f"{version_of(result.canary)} {weight(result.canary_weight_bp)}"
         if result.canary else None),
        ("rollout", result.rollout_id),
        ("profile", result.profile),
        ("protected", "yes" if result.protected else "no"),
        ("base", result.base_fingerprint),
        ("revision", result.revision),
        ("updated", output.when(result.updated_at)),
    ])


@channel.command("ls")
@click.argument("adapter", metavar="NS/NAME")
@json_option
@pass_app
def channel_ls(app: App, adapter: str) -> None:
    """List the channels of ADAPTER."""
    rows = app.client().channels(adapter)
    if app.json:
        output.emit_json(rows)
        return
    output.table(["CHANNEL", "STABLE", "CANARY", "WEIGHT", "ROLLOUT", "PROFILE", "REV"],
                 [[r.name, version_of(r.stable), version_of(r.canary),
                   weight(r.canary_weight_bp) if r.canary else "-", r.rollout_id,
                   r.profile + (" (protected)" if r.protected else ""), r.revision]
                  for r in rows])


COMMANDS = (promote, rollback, history, check, resolve, channel)
