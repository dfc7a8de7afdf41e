"""``lorareg``: the command-line client of a lorareg server.

Exit codes: ``registry.errors.EXIT_CODES`` says what each means; ``lorareg --help`` shows
them (:func:`exit_codes_epilog`), and every error class carries its own.

An expected failure prints exactly one line, ``error: <detail>``, on stderr (with ``--json``
the problem document is also printed on stdout) and never a traceback. Click's usage errors
are :class:`~registry.errors.UsageError` s like any other (exit 1, not click's 2, which
means "not found" here).

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
    agent,
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
from registry.errors import EXIT_CODES, RegistryError, UsageError

DEFAULT_URL = "http://127.0.0.1:8080"


def exit_codes_epilog() -> str:
    """The ``--help`` epilog: ``EXIT_CODES``, one line each, Markdown's backticks as quotes
    (click keeps the lines of a paragraph that starts with ``\\b`` as they are)."""
    lines = [f"  {code}  {_plain(meaning)}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(["\b", "Exit codes:", *lines])


def _plain(markdown: str) -> str:
    return markdown.replace("`", "'")


def report_error(err: RegistryError, as_json: bool) -> None:
    """One line on stderr; with --json also the problem document on stdout."""
    if as_json:
        click.echo(json.dumps(err.to_problem(), default=str))
    click.echo(f"error: {' '.join(err.detail.split())}", err=True)


def usage_error(exc: click.ClickException) -> UsageError:
    """Click's complaint as one line, naming the help to read for a wrong flag or argument."""
    detail = exc.format_message()
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        end = "" if detail.endswith((".", "?", "!")) else "."
        detail = f"{detail}{end} See '{exc.ctx.command_path} --help'."
    return UsageError(detail)


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
            report_error(UsageError(str(err)), as_json=False)
            ctx.exit(UsageError.exit_code)

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
            code = UsageError.exit_code  # interrupted (Ctrl-C, or no to a prompt)
        except click.ClickException as exc:
            err = usage_error(exc)
            report_error(err, as_json=False)
            code = err.exit_code  # click uses 2 for usage errors; 2 means "not found" here
        except RegistryError as err:  # raised outside a command, e.g. while parsing
            report_error(err, as_json=False)
            code = err.exit_code
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=LoraregGroup, epilog=exit_codes_epilog(),
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
    agent.agent,
):
    main.add_command(command)
