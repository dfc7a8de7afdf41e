"""``lorareg export``: materialize what engines load into a folder.

* ``--pool NS/POOL --dir DIR`` (:mod:`registry.serving.export`): the pool's desired set, one
  immutable folder per served name, configs naming the pool's model id, drained before
  deletion; with ``--vllm-url`` the engine's loaded adapters are made to match too.
* ``NAMESPACE --channel CH --dir DIR`` (:mod:`registry.serving.channel_export`): the older
  layout, one switched symlink per adapter name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.channel_params import seconds
from cli.params import Duration
from registry.errors import EngineRefused, RegistryError
from registry.serving.channel_export import DEFAULT_DRAIN_SECONDS, STORE, export_channel
from registry.serving.drain import utcnow
from registry.serving.export import PoolExport, PoolExportResult
from registry.serving.vllm import VllmRuntime
from registry.statuses import VersionStatus


@click.command()
@click.argument("namespace", required=False)
@click.option("--pool", default=None, metavar="NS/POOL",
              help="Export this serving pool's desired set (what vLLM should serve).")
@click.option("--channel", "-c", default=None, metavar="NAME",
              help="With NAMESPACE: export this channel's stable versions (older layout).")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to materialize (e.g. vLLM's VLLM_LORA_RESOLVER_CACHE_DIR).")
@click.option("--verify", is_flag=True,
              help="Re-hash versions exported earlier (damaged files are replaced).")
@click.option("--vllm-url", default=None, metavar="URL",
              help="--pool: also load the desired adapters into this vLLM through its runtime "
                   "API and unload drained ones (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")
@click.option("--vllm-api-key", envvar="LORAREG_VLLM_API_KEY", default=None, metavar="KEY",
              help="vLLM's --api-key, if it has one [env LORAREG_VLLM_API_KEY].")
@click.option("--engine-dir", default=None, metavar="PATH",
              help="--pool: DIR as the engine sees it (a container mount) [default: DIR].")
@click.option("--watch", type=Duration(), default=None, metavar="INTERVAL",
              help="--pool: export again every INTERVAL (e.g. 30s) until interrupted.")
@click.option("--drain", type=Duration(allow_zero=True), default=None,
              help="NAMESPACE --channel: keep unused links and folders this long "
                   f"[default: {seconds(DEFAULT_DRAIN_SECONDS)}]; --pool uses the pool's.")
@json_option
@pass_app
def export(app: App, namespace: str | None, pool: str | None, channel: str | None, root: Path,
           verify: bool, vllm_url: str | None, vllm_api_key: str | None,
           engine_dir: str | None, watch: float | None, drain: float | None) -> None:
    """Materialize adapters into --dir for inference engines.

    --pool NS/POOL: one immutable folder DIR/<served name>/ per version of the pool's desired
    set (stable, canary and pinned versions), adapter_config.json naming the pool's model id
    (what vLLM's filesystem resolver requires), the original kept in DIR/<name>/.lorareg.json.
    A folder goes only when no desired set of the pool holds it and the pool's drain has
    passed. With --vllm-url, desired adapters are loaded and drained ones unloaded (before
    their folder is deleted); exit 4 if the engine refused any, with its reason; exit 6 if it
    cannot be reached.

    NAMESPACE --channel CH: the older layout, DIR/<name> a symlink switched atomically to an
    immutable folder DIR/.lorareg/<name>@<version>-<digest>/ per stable version; unused links
    and folders are deleted after --drain.
    """
    _check_mode(namespace, pool, channel, vllm_url, engine_dir, watch, drain)
    if pool is None:
        assert namespace is not None and channel is not None  # checked above
        _export_channel(app, namespace, channel, root, verify,
                        DEFAULT_DRAIN_SECONDS if drain is None else drain)
        return
    engine = VllmRuntime(vllm_url, api_key=vllm_api_key) if vllm_url else None
    try:
        job = PoolExport(app.client(), pool, root, engine=engine, engine_dir=engine_dir,
                         verify=verify)
        if watch is None:
            _round(app, job)
        else:
            _watch(app, job, watch)
    finally:
        if engine is not None:
            engine.close()


def _check_mode(namespace: str | None, pool: str | None, channel: str | None,
                vllm_url: str | None, engine_dir: str | None, watch: float | None,
                drain: float | None) -> None:
    if pool is not None and (namespace is not None or channel is not None):
        raise click.UsageError("--pool replaces NAMESPACE --channel")
    if pool is None and (namespace is None or channel is None):
        raise click.UsageError("give --pool NS/POOL, or NAMESPACE with --channel")
    if pool is None and (vllm_url or engine_dir or watch is not None):
        raise click.UsageError("--vllm-url, --engine-dir and --watch need --pool")
    if pool is not None and drain is not None:
        raise click.UsageError("--drain is for NAMESPACE --channel; a pool has its own "
                               "(lorareg pool set NS/POOL --drain)")


def _round(app: App, job: PoolExport) -> None:
    """One export; the engine's refusals raised (exit 4) after everything is reported."""
    with app.progress_bar("export") as bar:
        job.progress = bar
        result = job.run()
    _report(app, result)
    if result.engine is not None and result.engine.refused:
        refused = result.engine.refused
        raise EngineRefused(
            f"{result.engine.url} refused {len(refused)} adapter(s): "
            + "; ".join(f"{name}: {text}" for name, text in sorted(refused.items())),
            engine=result.engine.url, refused=refused)


def _watch(app: App, job: PoolExport, interval: float,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Export every ``interval`` seconds; a failed round is reported and the next one runs."""
    while True:
        try:
            _round(app, job)
        except RegistryError as err:
            click.echo(f"error: {' '.join(err.detail.split())}", err=True)
        sleep(interval)


def _report(app: App, result: PoolExportResult) -> None:
    if app.json:
        output.emit_json(result.to_json())
        return
    for m in result.members:
        got = f", {output.size(m.downloaded_bytes)} downloaded" if m.downloaded_bytes else ""
        app.say(f"{m.served_name}  {m.status} ({m.ref}{got})")
        for problem in m.problems:
            click.echo(f"warning: {m.ref}: the registry says pool {result.pool} cannot serve "
                       f"it: {problem}", err=True)
    if result.engine is not None:  # in the order it happened: loads, unloads, deletions
        engine = result.engine
        for name in engine.loaded:
            app.say(f"{name}  loaded into {engine.url}")
        for name in engine.unloaded:
            app.say(f"{name}  unloaded from {engine.url}")
        for name, text in sorted(engine.refused.items()):
            click.echo(f"refused by {engine.url}: {name}: {text}", err=True)
    for m in result.draining:
        app.say(f"{m.served_name}  draining ({m.ref}; {_left(m.left_at)}, kept until "
                f"{_when(m.removable_at)})")
    for m in result.removed:
        app.say(f"{m.served_name}  removed ({m.ref}; {_left(m.left_at)})")
    app.note(f"pool {result.pool}: {len(result.members)} served names in {result.dir}, "
             f"{output.size(result.downloaded_bytes)} downloaded, {len(result.draining)} "
             f"draining, {len(result.removed)} removed (drain {seconds(result.drain_seconds)})")


def _left(when: datetime | None) -> str:
    if when is None:
        return "left the desired set, date unknown"
    return f"left {seconds(max(0, int((utcnow() - when).total_seconds())))} ago"


def _when(when: datetime | None) -> str:
    return "-" if when is None else when.isoformat(timespec="seconds")


def _export_channel(app: App, namespace: str, channel: str, root: Path, verify: bool,
                    drain: float) -> None:
    with app.progress_bar("export") as bar:
        result = export_channel(app.client(), namespace, channel, root.resolve(),
                                verify=verify, progress=bar, drain=drain)
    for item in result.adapters:
        if item.status == VersionStatus.YANKED:
            click.echo(f"warning: {item.ref}, stable on {channel}, is yanked; roll the channel "
                       "back to stop serving it", err=True)
    if app.json:
        output.emit_json(result.to_json())
        return
    for item in result.adapters:
        change = "switched" if item.switched else "unchanged"
        app.say(f"{item.name} -> {STORE}/{item.folder} ({change}, "
                f"{output.size(item.downloaded_bytes)} downloaded)")
    for name in result.removed:
        app.say(f"{name}: removed (no longer on {channel})")
    app.note(f"{len(result.adapters)} adapters in {result.dir}, "
             f"{output.size(result.downloaded_bytes)} downloaded, "
             f"{len(result.pruned)} old folders pruned, {len(result.draining)} draining")
