"""State shared by every command: where the server is, how to authenticate, how to print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from tqdm import tqdm

from registry.client import Client
from registry.errors import BadRequest
from registry.safetensors_io import HeaderLimits

if TYPE_CHECKING:  # imported lazily at run time, by the commands that read a setting
    from registry.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """Global options, resolved (flag > environment > config file > default)."""

    url: str
    token: str | None
    config_path: Path
    json: bool = False
    quiet: bool = False
    timeout: float = 30.0
    retries: int = 4
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        """The one Client of this invocation, created on first use."""
        if self._client is None:
            self._client = Client(self.url, self.token, timeout=self.timeout,
                                  retries=self.retries)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def note(self, message: str) -> None:
        """A human remark on stderr, silenced by --quiet and --json."""
        if not (self.quiet or self.json):
            click.echo(message, err=True)

    def say(self, message: str) -> None:
        """The human result of a write command on stdout (silenced by --quiet)."""
        if not self.quiet:
            click.echo(message)

    @property
    def shows_progress(self) -> bool:
        """Progress bars go to stderr only on a TTY, and never with --quiet/--json."""
        return not (self.quiet or self.json) and sys.stderr.isatty()

    def progress_bar(self, desc: str) -> tqdm[Any]:
        """A byte progress bar on stderr (see :attr:`shows_progress`)."""
        return tqdm(
            total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, disable=not self.shows_progress, leave=False,
        )

    def percent_bar(self, desc: str) -> tqdm[Any]:
        """A 0-100 % progress bar on stderr for server-side work such as a merge job."""
        return tqdm(
            total=100, desc=desc, unit="%", file=sys.stderr, disable=not self.shows_progress,
            leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
        )

    def fingerprint_cache_path(self) -> Path | None:
        """LORAREG_FINGERPRINT_CACHE, read through the one Settings object."""
        return self.settings().fingerprint_cache

    def safetensors_limits(self) -> HeaderLimits:
        """LORAREG_MAX_SAFETENSORS_HEADER/_TENSORS: push refuses locally what a server with the
        same settings would refuse."""
        return self.settings().safetensors_limits

    def settings(self) -> Settings:
        """The one Settings object (read only by the commands that need a setting, so a bad
        variable does not break the others)."""
        from pydantic import ValidationError

        from registry.config import get_settings

        try:
            return get_settings()
        except ValidationError as exc:
            raise BadRequest(f"invalid LORAREG_* setting: {exc}") from None


pass_app = click.make_pass_decorator(App)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    app = ctx.find_object(App)
    if value and app is not None:
        app.json = True


def json_option(f: F) -> F:
    """``--json`` also accepted after the command name (``lorareg ls --json``)."""
    option = click.option(
        "--json", "json_output", is_flag=True, expose_value=False, callback=_set_json,
        help="Print JSON on stdout (same as the global --json).",
    )
    return option(f)
