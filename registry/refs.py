"""Names and references: ``ns/name``, ``ns/name@7``, ``ns/name@latest``, ``ns/name:prod``,
and base references ``hub_id@revision``. Pure parsing, shared by services, API and CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import BadRequest

NAMESPACE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?\Z")
ADAPTER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?\Z")
CHANNEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?\Z")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?\Z")
MAX_VERSION = 2**31 - 1
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")


@dataclass(frozen=True)
class Ref:
    """A reference to a version: exactly one of ``version``, ``latest`` or ``channel``."""

    namespace: str
    name: str
    version: int | None = None
    channel: str | None = None

    @property
    def adapter(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        if self.channel:
            return f"{self.adapter}:{self.channel}"
        return f"{self.adapter}@{self.version if self.version is not None else 'latest'}"


def parse_adapter_name(text: str) -> tuple[str, str]:
    """``"acme/support-bot"`` -> ``("acme", "support-bot")``, validated."""
    ns, sep, name = text.partition("/")
    if not sep:
        raise BadRequest(f"adapter name {text!r} must look like namespace/name")
    check_namespace(ns)
    if not ADAPTER_RE.match(name):
        raise BadRequest(
            f"adapter name {name!r} is invalid: letters, digits, '.', '_', '-' (max 128)"
        )
    return ns, name


def check_namespace(ns: str) -> str:
    if not NAMESPACE_RE.match(ns):
        raise BadRequest(
            f"namespace {ns!r} is invalid: lowercase letters, digits, '.', '_', '-' (max 64)"
        )
    return ns


def check_channel(channel: str) -> str:
    if not CHANNEL_RE.match(channel):
        raise BadRequest(f"channel {channel!r} is invalid: lowercase letters, digits, '_', '-'")
    return channel


def parse_pool_name(text: str) -> tuple[str, str]:
    """``"acme/gpu-a"`` -> ``("acme", "gpu-a")``: a serving pool; its name follows the
    namespace rules."""
    ns, sep, name = text.partition("/")
    if not sep or not NAMESPACE_RE.match(ns) or not NAMESPACE_RE.match(name):
        raise BadRequest(f"pool {text!r} must look like namespace/name (lowercase letters, "
                         "digits, '.', '_', '-')")
    return ns, name


def parse_ref(text: str) -> Ref:
    """Parse ``ns/name@7``, ``ns/name@latest``, ``ns/name`` (= latest) or ``ns/name:chan``."""
    if "@" in text:
        adapter, _, sel = text.rpartition("@")
        ns, name = parse_adapter_name(adapter)
        if sel == "latest":
            return Ref(ns, name)
        if not sel.isdigit() or not 1 <= int(sel) <= MAX_VERSION:
            raise BadRequest(f"version in {text!r} must be a positive integer or 'latest'")
        return Ref(ns, name, version=int(sel))
    if ":" in text:
        adapter, _, chan = text.rpartition(":")
        ns, name = parse_adapter_name(adapter)
        return Ref(ns, name, channel=check_channel(chan))
    ns, name = parse_adapter_name(text)
    return Ref(ns, name)


def parse_base_ref(text: str) -> tuple[str, str]:
    """``"meta-llama/Llama-3.1-8B@<commit>"`` -> ``(hub_id, revision)``."""
    hub_id, sep, revision = text.rpartition("@")
    if not sep:
        raise BadRequest(f"base {text!r} must look like HUB_ID@REVISION (a commit hash)")
    check_base(hub_id, revision)
    return hub_id, revision


def check_base(hub_id: str, revision: str) -> None:
    if not HUB_ID_RE.match(hub_id) or len(hub_id) > 256:
        raise BadRequest(f"base hub id {hub_id!r} is invalid")
    if not REVISION_RE.match(revision):
        raise BadRequest(f"base revision {revision!r} is invalid")
