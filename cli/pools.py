"""Serving pools: ``pool create|set|ls|show|bind|unbind|pin|unpin|desired|status`` and
``where``.

A pool describes inference engines started alike: the registered base, what ``vllm serve`` was
given (``--model-id``, ``--max-lora-rank``, ``--max-loras``, ``--max-cpu-loras``, ``--dtype``,
``--target-modules``) and the channels they serve. Promotions onto a bound channel, bindings,
pins and setting changes are refused with exit 4 and every reason when a version would not be
served correctly. ``lorareg check REF --pool NS/POOL`` runs the same checks without a change.
"""

from __future__ import annotations

import re
from typing import Any

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.channel_params import echo_problems, seconds
from cli.params import Duration
from registry.client import PoolDetailOut, ReplicaOut
from registry.statuses import BaseVerdict
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK, MAX_LORA_RANKS

SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
              "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
RANKS = click.Choice([str(r) for r in MAX_LORA_RANKS])


class Size(click.ParamType[int]):
    """Bytes, written ``8GiB``, ``512MiB``, ``2GB`` or plain bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m and SIZE_UNITS.get(m[2].lower())
        if m is None or unit is None:
            self.fail(f"{value!r} is not a size like 8GiB, 512MiB or 1000000", param, ctx)
        size = int(float(m[1]) * unit)
        if size < 1:
            self.fail(f"{value!r} must be at least one byte", param, ctx)
        return size


def _targets(_ctx: click.Context, _param: click.Parameter, value: str | None
             ) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("name at least one module, e.g. q_proj,v_proj")
    return names


def _summary(app: App, pool: PoolDetailOut, did: str) -> None:
    if app.json:
        output.emit_json(pool)
    else:
        app.say(f"{did} pool {pool.name}: channels {', '.join(pool.channels) or '-'}; "
                f"pinned {', '.join(pool.pinned) or '-'}")


@click.group()
def pool() -> None:
    """Serving pools: engines started alike, the channels they serve, what they must load."""


@pool.command("create")
@click.argument("name", metavar="NS/POOL")
@click.option("--engine", type=click.Choice(["vllm"]), default="vllm", show_default=True)
@click.option("--base", required=True, metavar="HUB_ID@REVISION",
              help="The registered base the engines run.")
@click.option("--model-id", required=True, metavar="PATH_OR_ID",
              help="What the engine was started with (`vllm serve MODEL_ID`); exported "
                   "adapters name it as their base_model_name_or_path.")
@click.option("--served-model-name", default=None, help="vLLM --served-model-name.")
@click.option("--architecture", default=None, metavar="NAME",
              help="The model's architecture (config.json), e.g. LlamaForCausalLM: decides "
                   "embedding LoRA and packed modules.")
@click.option("--max-lora-rank", type=RANKS, default=str(DEFAULT_MAX_LORA_RANK),
              show_default=True, help="vLLM --max-lora-rank.")
@click.option("--max-loras", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="vLLM --max-loras (adapters in one batch).")
@click.option("--max-cpu-loras", type=click.IntRange(1, 65536), default=None,
              help="vLLM --max-cpu-loras (adapters kept in memory) [default: --max-loras].")
@click.option("--dtype", required=True, type=click.Choice(["bfloat16", "float16", "float32"]),
              help="vLLM --dtype: adapter tensors are cast to it.")
@click.option("--target-modules", callback=_targets, default=None, metavar="M1,M2",
              help="vLLM --lora-target-modules, if the engines restrict them.")
@click.option("--max-adapter-memory", type=Size(), default=None,
              help="Bytes the desired set's adapters may take in --dtype (e.g. 8GiB).")
@click.option("--drain", "drain", type=Duration(allow_zero=True), default="10m",
              show_default=True, help="How long a version that left the desired set stays "
                                      "loadable (export keeps its folder).")
@json_option
@pass_app
def create(
    app: App, name: str, engine: str, base: str, model_id: str, served_model_name: str | None,
    architecture: str | None, max_lora_rank: str, max_loras: int, max_cpu_loras: int | None,
    dtype: str, target_modules: list[str] | None, max_adapter_memory: int | None,
    drain: float,
) -> None:
    """Create serving pool NS/POOL (admins of the namespace)."""
    result = app.client().create_pool(
        name, engine=engine, base=base, model_id=model_id, served_model_name=served_model_name,
        architecture=architecture, max_lora_rank=int(max_lora_rank), max_loras=max_loras,
        max_cpu_loras=max_cpu_loras, dtype=dtype, target_modules=target_modules,
        max_adapter_memory=max_adapter_memory, drain_seconds=int(drain))
    _summary(app, result, "created")


@pool.command("set")
@click.argument("name", metavar="NS/POOL")
@click.option("--model-id", default=None, metavar="PATH_OR_ID")
@click.option("--served-model-name", default=None)
@click.option("--architecture", default=None, metavar="NAME")
@click.option("--max-lora-rank", type=RANKS, default=None)
@click.option("--max-loras", type=click.IntRange(1, 4096), default=None)
@click.option("--max-cpu-loras", type=click.IntRange(1, 65536), default=None)
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None)
@click.option("--target-modules", callback=_targets, default=None, metavar="M1,M2")
@click.option("--max-adapter-memory", type=Size(), default=None)
@click.option("--drain", type=Duration(allow_zero=True), default=None)
@click.option("--clear", "clear", multiple=True,
              type=click.Choice(["served_model_name", "architecture", "target_modules",
                                 "max_adapter_memory"]),
              help="Unset an optional setting (repeatable).")
@json_option
@pass_app
def set_(
    app: App, name: str, model_id: str | None, served_model_name: str | None,
    architecture: str | None, max_lora_rank: str | None, max_loras: int | None,
    max_cpu_loras: int | None, dtype: str | None, target_modules: list[str] | None,
    max_adapter_memory: int | None, drain: float | None, clear: tuple[str, ...],
) -> None:
    """Change settings of pool NS/POOL (admins); refused if its desired set would break."""
    result = app.client().update_pool(
        name, clear, model_id=model_id, served_model_name=served_model_name,
        architecture=architecture, max_lora_rank=int(max_lora_rank) if max_lora_rank else None,
        max_loras=max_loras, max_cpu_loras=max_cpu_loras, dtype=dtype,
        target_modules=target_modules, max_adapter_memory=max_adapter_memory,
        drain_seconds=int(drain) if drain is not None else None)
    _summary(app, result, "changed")


@pool.command("ls")
@click.option("--namespace", "-n", default=None, help="Only this namespace's pools.")
@json_option
@pass_app
def ls(app: App, namespace: str | None) -> None:
    """List the pools you may read."""
    rows = app.client().pools(namespace)
    if app.json:
        output.emit_json(rows)
        return
    output.table(["POOL", "ENGINE", "BASE", "MODEL", "RANK", "LORAS", "DTYPE"],
                 [[r.name, r.engine, r.base, r.model_id, r.max_lora_rank,
                   f"{r.max_loras}/{r.max_cpu_loras}", r.dtype] for r in rows])


@pool.command("show")
@click.argument("name", metavar="NS/POOL")
@json_option
@pass_app
def show(app: App, name: str) -> None:
    """Show pool NS/POOL: settings, bound channels, pinned versions."""
    r = app.client().pool(name)
    if app.json:
        output.emit_json(r)
        return
    output.fields([
        ("pool", r.name), ("engine", r.engine),
        ("base", f"{r.base} ({r.base_fingerprint[:12]})"), ("model id", r.model_id),
        ("served model name", r.served_model_name), ("architecture", r.architecture),
        ("max lora rank", r.max_lora_rank),
        ("max loras", f"{r.max_loras} in a batch, {r.max_cpu_loras} in memory"),
        ("dtype", r.dtype),
        ("target modules", ", ".join(r.target_modules) if r.target_modules else None),
        ("adapter memory", output.size(r.max_adapter_memory) if r.max_adapter_memory else None),
        ("drain", seconds(r.drain_seconds)),
        ("channels", ", ".join(r.channels) or None),
        ("pinned", ", ".join(r.pinned) or None),
    ])


@pool.command("bind")
@click.argument("name", metavar="NS/POOL")
@click.argument("channel", metavar="NS/NAME:CHANNEL")
@json_option
@pass_app
def bind(app: App, name: str, channel: str) -> None:
    """Make pool NS/POOL serve CHANNEL: what it serves joins the desired set (checked)."""
    _summary(app, app.client().bind_pool(name, channel), "bound to")


@pool.command("unbind")
@click.argument("name", metavar="NS/POOL")
@click.argument("channel", metavar="NS/NAME:CHANNEL")
@json_option
@pass_app
def unbind(app: App, name: str, channel: str) -> None:
    """Stop serving CHANNEL from pool NS/POOL."""
    _summary(app, app.client().unbind_pool(name, channel), "unbound from")


@pool.command("pin")
@click.argument("name", metavar="NS/POOL")
@click.argument("ref", metavar="NS/NAME@N")
@json_option
@pass_app
def pin(app: App, name: str, ref: str) -> None:
    """Keep version REF in the desired set of NS/POOL whatever its channels serve."""
    _summary(app, app.client().pin_pool(name, ref), "pinned to")


@pool.command("unpin")
@click.argument("name", metavar="NS/POOL")
@click.argument("ref", metavar="NS/NAME@N")
@json_option
@pass_app
def unpin(app: App, name: str, ref: str) -> None:
    """Release a pinned version of pool NS/POOL."""
    _summary(app, app.client().unpin_pool(name, ref), "unpinned from")


@pool.command("desired")
@click.argument("name", metavar="NS/POOL")
@click.option("--left", "with_left", is_flag=True,
              help="Also list the versions that left the set, and when.")
@json_option
@pass_app
def desired(app: App, name: str, with_left: bool) -> None:
    """What pool NS/POOL must serve: each version's served name, why, and its verdict."""
    r = app.client().desired(name)
    if app.json:
        output.emit_json(r)
        return
    output.table(["VERSION", "SERVED NAME", "SOURCES", "SINCE", "OK"],
                 [[m.ref, m.served_name, "; ".join(m.sources), output.when(m.added_at),
                   "yes" if m.ok else "NO"] for m in r.members])
    for m in r.members:
        if m.problems:
            click.echo(f"{m.ref}:")
            echo_problems(m.problems)
    if r.set_problems:
        click.echo("the set as a whole:")
        echo_problems(r.set_problems)
    if with_left:
        click.echo("left:")
        output.table(["VERSION", "SERVED NAME", "FROM", "UNTIL"],
                     [[m.ref, m.served_name, output.when(m.added_at), output.when(m.removed_at)]
                      for m in r.left])


@pool.command("status")
@click.argument("name", metavar="NS/POOL")
@json_option
@pass_app
def status(app: App, name: str) -> None:
    """What the replicas of pool NS/POOL hold: each one's heartbeat age, verdict (its base
    fingerprint against the pool's), loaded vs desired, and drift (missing, extra, failed
    loads with the engine's error, bytes that differ). Live: heard within 3 heartbeat
    intervals."""
    r = app.client().pool_status(name)
    if app.json:
        output.emit_json(r)
        return
    desired = [v.served_name for v in r.versions if not v.draining]
    output.table(["REPLICA", "LIVE", "VERDICT", "HEARTBEAT", "LOADED", "DRIFT", "ENGINE"],
                 [[x.replica_id, "yes" if x.live else "NO", x.verdict.value,
                   f"{x.heartbeat_age_seconds:.0f}s ago",
                   f"{sum(n in x.loaded for n in desired)}/{len(desired)}", len(x.drift),
                   x.engine_url or x.engine] for x in r.replicas])
    for x in r.replicas:
        _echo_replica_problems(x)
    verdicts = ", ".join(f"{n} {v.value}" for v, n in r.verdicts.items() if n)
    app.say(f"pool {r.pool}: {r.live} live of {len(r.replicas)} replicas ({verdicts or '-'}); "
            f"{len(desired)} desired; drift on {len(r.drift_versions)} version(s)")


def _echo_replica_problems(x: ReplicaOut) -> None:
    lines = [f"{d.kind.value} {d.served_name}: {d.detail}" for d in x.drift]
    if x.verdict == BaseVerdict.INCOMPATIBLE:
        lines.insert(0, f"base {x.base_fingerprint} (the pool's is {x.pool_fingerprint})")
    if x.last_error:
        lines.append(f"agent error: {x.last_error}")
    if x.pending:
        lines.append(f"pending: {', '.join(x.pending)}")
    if lines:
        click.echo(f"{x.replica_id}:")
        echo_problems(lines)


@click.command()
@click.argument("ref", metavar="NS/NAME@N")
@json_option
@pass_app
def where(app: App, ref: str) -> None:
    """Which replicas of which pools hold version REF (NS/NAME@N, @latest or NS/NAME:CHANNEL's
    stable), in which state and whether with its bytes; and which pools want it."""
    r = app.client().where(ref)
    if app.json:
        output.emit_json(r)
        return
    output.table(["POOL", "REPLICA", "STATE", "BYTES", "LIVE", "SINCE", "ERROR"],
                 [[x.pool, x.replica_id, x.state.value, "ok" if x.bytes_ok else "DIFFER",
                   "yes" if x.live else "NO", output.when(x.since), output.short(x.error, 60)]
                  for x in r.replicas])
    app.say(f"{r.ref} ({r.served_name}): desired in {', '.join(r.desired_in) or '-'}; "
            f"draining in {', '.join(r.draining_in) or '-'}; held by {len(r.replicas)} "
            "replica(s)")


COMMANDS = (pool, where)
