"""The CLI's config file (``~/.config/lorareg/config.json``) and ``login``/``logout``/``whoami``.

The file holds ``{"url": ..., "token": ...}`` and is written with mode 0600 (its folder 0700),
atomically, so a token never sits in a world-readable file, not even briefly. The stored token
is only sent to the stored URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

from cli import output
from cli.app import App, json_option, pass_app
from registry.client import Client
from registry.errors import BadRequest


@dataclass(frozen=True)
class StoredConfig:
    url: str | None = None
    token: str | None = None


def default_path() -> Path:
    return Path.home() / ".config" / "lorareg" / "config.json"


def load(path: Path) -> StoredConfig:
    """The stored config; empty when the file does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return StoredConfig()
    except (OSError, ValueError) as exc:
        raise BadRequest(f"config file {path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"config file {path} must hold a JSON object")
    return StoredConfig(url=_str(data.get("url")), token=_str(data.get("token")))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def save(path: Path, config: StoredConfig) -> None:
    """Write the config atomically with mode 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": config.url, "token": config.token}, fh, indent=2)
        tmp.chmod(0o600)  # O_CREAT's mode is masked by umask; be explicit
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@click.command()
@click.option("--url", help="Server URL to store (default: the global --url).")
@click.option("--token", help="API token to store; prompted for when omitted.")
@json_option
@pass_app
def login(app: App, url: str | None, token: str | None) -> None:
    """Check a token against the server and store URL and token in the config file."""
    url = (url or app.url).rstrip("/")
    token = token or app.token or click.prompt("Token", hide_input=True)
    with Client(url, token, timeout=app.timeout, retries=app.retries) as client:
        who = client.whoami()
    save(app.config_path, StoredConfig(url=url, token=token))
    if app.json:
        output.emit_json({**who.model_dump(mode="json"), "url": url,
                          "config": str(app.config_path)})
    else:
        app.say(f"logged in to {url} as {who.actor} ({who.role}); saved to {app.config_path}")


@click.command()
@pass_app
def logout(app: App) -> None:
    """Forget the stored token (the URL is kept)."""
    stored = load(app.config_path)
    if stored.token:
        save(app.config_path, StoredConfig(url=stored.url))
    app.say(f"removed the stored token from {app.config_path}")


@click.command()
@json_option
@pass_app
def whoami(app: App) -> None:
    """Show who the current token acts as."""
    who = app.client().whoami()
    if app.json:
        output.emit_json(who)
        return
    output.fields([("server", app.url), ("actor", who.actor), ("role", who.role),
                   ("namespace", who.namespace or "*"), ("auth", who.auth)])
