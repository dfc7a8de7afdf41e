"""API paths of references (``ns/name``, ``ns/name@3``, ``ns/name:prod``, ``ns/pool``), checked
here so a malformed reference is a BadRequest before anything is sent."""

from __future__ import annotations

from registry import errors
from registry.refs import Ref, parse_adapter_name, parse_pool_name, parse_ref

POOLS = "/api/v1/pools"


def adapter_path(name: str) -> str:
    ns, adapter = parse_adapter_name(name)
    return f"/api/v1/adapters/{ns}/{adapter}"


def version_path(ref: str, *, explicit: bool = False) -> str:
    """``/api/v1/adapters/<ns>/<name>/versions/<N|latest>`` of a reference."""
    r = parse_ref(ref)
    if r.channel:
        raise errors.BadRequest(f"{ref}: channel references are not supported here yet")
    if explicit and r.version is None:
        raise errors.BadRequest(f"{ref}: name an explicit version, e.g. {r.adapter}@3")
    sel = "latest" if r.version is None else str(r.version)
    return f"{adapter_path(r.adapter)}/versions/{sel}"


def channel_ref(ref: str) -> Ref:
    """Parse ``ns/name:chan``; anything else is a BadRequest naming the expected form."""
    r = parse_ref(ref)
    if r.channel is None:
        raise errors.BadRequest(f"{ref!r} is not a channel reference like ns/name:prod")
    return r


def explicit_version(ref: str) -> Ref:
    """Parse ``ns/name@N`` (an explicit version number, not latest or a channel)."""
    r = parse_ref(ref)
    if r.version is None:
        raise errors.BadRequest(f"{ref!r}: name an explicit version, e.g. {r.adapter}@3")
    return r


def channel_path(ref: str) -> str:
    r = channel_ref(ref)
    return f"{adapter_path(r.adapter)}/channels/{r.channel}"


def pool_path(name: str) -> str:
    ns, pool = parse_pool_name(name)
    return f"{POOLS}/{ns}/{pool}"
