"""Channels, rollouts, live metrics and resolve.

Compare-and-swap: every channel change sends the revision the caller last read. When the
caller does not name one (``expect_revision=None``), :func:`promote` and :func:`rollback` read
the channel first and send its current revision, so two pipelines promoting at once get one
success and one :class:`registry.errors.Conflict` (HTTP 409, exit 3), never a silent overwrite.
A channel that does not exist yet is expected at revision 0, the revision the server creates it
with: two pipelines creating the same channel also get one success and one Conflict.

Channel references ``ns/name:chan`` stand for the channel's stable version wherever a version
is read (:func:`pin_channel`; ``Client.version``, ``Client.pull`` and ``Client.check`` accept
them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from registry import errors
from registry.client._http import Http, parse, query
from registry.client._paths import adapter_path, channel_path, channel_ref, explicit_version
from registry.client._results import Resolved
from registry.refs import check_channel, check_namespace, parse_ref
from registry.statuses import ROLLOUT_FINAL
from registry.wire import (
    ChannelEventOut,
    ChannelOut,
    GateEvaluationOut,
    Items,
    LiveAccepted,
    Page,
    PromoteOut,
    ResolveOut,
    RolloutOut,
)


@dataclass(frozen=True)
class Canary:
    """How a promotion walks: at once (``now``) or through ``steps`` behind ``gates``."""

    now: bool
    steps: list[int]
    interval_seconds: int
    gates: list[str]
    max_failures: int
    deadline_seconds: int | None
    min_requests: int
    new_base: bool


def pin_channel(http: Http, ref: str) -> str:
    """A channel reference as the explicit ``ns/name@N`` of its stable version."""
    r = parse_ref(ref)
    if r.channel is None:
        return ref
    stable = channel(http, ref).stable
    if stable is None:
        raise errors.NotFound(f"channel {ref} has no stable version", ref=ref)
    return f"{r.adapter}@{stable}"


def channel(http: Http, ref: str) -> ChannelOut:
    return http.get(channel_path(ref), ChannelOut)


def channels(http: Http, adapter: str) -> list[ChannelOut]:
    return http.get(f"{adapter_path(adapter)}/channels", Page[ChannelOut]).items


def configure_channel(http: Http, ref: str, profile: str | None, protected: bool | None,
                      expect_revision: int | None) -> ChannelOut:
    body: dict[str, Any] = {"profile": profile, "protected": protected,
                            "expect_revision": expect_revision}
    return http.call("PUT", channel_path(ref), ChannelOut,
                     json={k: v for k, v in body.items() if v is not None},
                     idempotent=expect_revision is None)  # a conditional change: not re-sent


def promote(http: Http, ref: str, channel_name: str, canary: Canary, reason: str,
            expect_revision: int | None) -> PromoteOut:
    version = explicit_version(ref)
    target = f"{version.adapter}:{check_channel(channel_name)}"
    if expect_revision is None:
        expect_revision = _current_revision(http, target, missing=0)
    body = {"version": version.version, **asdict(canary), "reason": reason,
            "expect_revision": expect_revision}
    return http.post(f"{channel_path(target)}/promote", body, PromoteOut)


def rollback(http: Http, ref: str, to: int | None, reason: str, expect_revision: int | None
             ) -> ChannelOut:
    if expect_revision is None:
        expect_revision = _current_revision(http, ref, missing=None)
    body = {"to_version": to, "reason": reason, "expect_revision": expect_revision}
    return http.post(f"{channel_path(ref)}/rollback", body, ChannelOut)


def history(http: Http, ref: str, limit: int | None) -> Iterator[ChannelEventOut]:
    return http.paginate(f"{channel_path(ref)}/history", ChannelEventOut, [], limit)


def rollout(http: Http, rollout_id: int) -> RolloutOut:
    return http.get(f"/api/v1/rollouts/{int(rollout_id)}", RolloutOut)


def rollout_evaluations(http: Http, rollout_id: int) -> list[GateEvaluationOut]:
    path = f"/api/v1/rollouts/{int(rollout_id)}/evaluations"
    return http.get(path, Items[GateEvaluationOut]).items


def control(http: Http, rollout_id: int, action: str, reason: str) -> RolloutOut:
    return http.post(f"/api/v1/rollouts/{int(rollout_id)}/{action}", {"reason": reason},
                     RolloutOut)


def wait_rollout(http: Http, rollout_id: int, timeout: float | None,
                 progress: Callable[[RolloutOut], object] | None) -> RolloutOut:
    return http.poll(f"/api/v1/rollouts/{int(rollout_id)}", RolloutOut,
                     lambda r: r.status in ROLLOUT_FINAL, timeout, progress)


def report_live(http: Http, reports: Sequence[Mapping[str, Any]]) -> int:
    body = {"reports": [dict(r) for r in reports]}
    return http.post("/api/v1/metrics/live", body, LiveAccepted).accepted


def resolve(http: Http, ref: str, key: str) -> Resolved:
    r = channel_ref(ref)
    response = http.send("GET", f"/api/v1/resolve/{r.namespace}/{r.name}:{r.channel}",
                         params=query(key=key))
    return Resolved(**parse(ResolveOut, response.json(), response).model_dump(),
                    etag=response.headers.get("etag"))


def resolve_batch(http: Http, channel_name: str, items: Sequence[str | Mapping[str, str]]
                  ) -> list[ResolveOut]:
    rows = [{"adapter": i} if isinstance(i, str) else dict(i) for i in items]
    response = http.send("POST", "/api/v1/resolve", idempotent=True,
                         json={"channel": check_channel(channel_name), "items": rows})
    return [parse(ResolveOut, row, response) for row in response.json()]


def resolve_namespace(http: Http, namespace: str, channel_name: str) -> list[ChannelOut]:
    return http.get_list(f"/api/v1/resolve/{check_namespace(namespace)}", ChannelOut,
                         query(channel=check_channel(channel_name)))


def _current_revision(http: Http, ref: str, missing: int | None) -> int | None:
    """The channel's revision now; ``missing`` if the channel does not exist (yet)."""
    try:
        return channel(http, ref).revision
    except errors.NotFound:
        if missing is None:
            raise
        return missing
