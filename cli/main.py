"""``lorareg``: the command-line client of a lorareg server.

Exit codes (also in ``lorareg --help``):

====  ==============================================================
0     success
1     usage error (bad flags or arguments), local file error, Ctrl-C
2     not found
3     conflict (already exists, revision mismatch, cancelled job, aborted rollout)
4     invalid input, invalid adapter or incompatible base
5     authentication or permission failure
6     server or network failure (also a job that failed otherwise, a wait that timed out)
7     a ``lorareg gate`` requirement is not met
====  ==============================================================

An expected failure prints exactly one line, ``error: <detail>``, on stderr (with ``--json``
the problem document is also printed on stdout) and never a traceback.

Commands are added with ``main.add_command`` (``serve`` and ``db`` come from ``cli.server``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cli import (
    adapters,
    audit,
    bases,
    channels,
    config_file,
    export,
    jobs,
    lifecycle,
    metrics,
    ops,
    pipeline,
    pools,
    rollouts,
    server,
    tokens,
    transfer,
)
from cli.app import App
from registry.errors import RegistryError

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_USAGE = 1
EXIT_INTERRUPTED = 1

EPILOG = """\b
Exit codes:
  0  success
  1  usage error (bad flags or arguments), local file error, interrupted
  2  not found
  3  conflict (already exists, revision mismatch, cancelled job, aborted rollout)
  4  invalid input, invalid adapter or incompatible base
  5  authentication or permission failure
  6  server or network failure (also a failed job, a wait that timed out)
  7  a 'lorareg gate' requirement is not met
"""


def report_error(err: RegistryError, as_json: bool) -> None:
    """One line on stderr; with --json also the problem document on stdout."""
    if as_json:
        click.echo(json.dumps(err.to_problem(), default=str))
    click.echo(f"error: {' '.join(err.detail.split())}", err=True)


class LoraregGroup(click.Group):
    """A click group that maps errors to lorareg's exit codes instead of click's."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as err:
            app = ctx.find_object(App)
            report_error(err, as_json=bool(app and app.json))
            ctx.exit(err.exit_code)
        except OSError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(EXIT_USAGE)

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.Abort:
            click.echo("Aborted!", err=True)
            code = EXIT_INTERRUPTED
        except click.ClickException as exc:
            exc.show()
            code = EXIT_USAGE  # click uses 2 for usage errors; 2 means "not found" here
        except RegistryError as err:  # raised outside a command, e.g. while parsing
            report_error(err, as_json=False)
            code = err.exit_code
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=LoraregGroup, epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--url", envvar="LORAREG_URL", metavar="URL",
              help=f"Server URL [env LORAREG_URL; else config file; else {DEFAULT_URL}].")
@click.option("--token", envvar="LORAREG_TOKEN", metavar="TOKEN",
              help="API token [env LORAREG_TOKEN; else config file].")
@click.option("--config", "config_path", envvar="LORAREG_CONFIG",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Config file [env LORAREG_CONFIG; default ~/.config/lorareg/config.json].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or remarks.")
@click.option("--timeout", envvar="LORAREG_TIMEOUT", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Seconds to wait for each network operation.")
@click.option("--retries", envvar="LORAREG_RETRIES", type=click.IntRange(min=0), default=4,
              show_default=True, help="Retries of failed requests (with backoff).")
@click.version_option(package_name="lorareg")
@click.pass_context
def main(
    ctx: click.Context, url: str | None, token: str | None, config_path: Path | None,
    as_json: bool, quiet: bool, timeout: float, retries: int,
) -> None:
    """Registry and lifecycle of LoRA adapters: push, pull, list, measure, yank."""
    path = config_path or config_file.default_path()
    stored = config_file.load(path)
    effective = (url or stored.url or DEFAULT_URL).rstrip("/")
    # The stored token belongs to the stored server: never send it anywhere else.
    if token is None and stored.url and stored.url.rstrip("/") == effective:
        token = stored.token
    app = App(url=effective, token=token, config_path=path, json=as_json, quiet=quiet,
              timeout=timeout, retries=retries)
    ctx.obj = app
    ctx.call_on_close(app.close)


for command in (
    config_file.login, config_file.logout, config_file.whoami,
    adapters.ls, adapters.show, adapters.namespace,
    transfer.push, transfer.pull,
    metrics.metrics, lifecycle.yank, lifecycle.unyank,
    bases.base, bases.verify, jobs.merge, jobs.jobs,
    tokens.token, audit.audit,
    server.serve, server.db, server.worker,
    *channels.COMMANDS, *rollouts.COMMANDS, export.export,
    ops.webhook, ops.gc, ops.retention, *pipeline.COMMANDS, *pools.COMMANDS,
):
    main.add_command(command)
