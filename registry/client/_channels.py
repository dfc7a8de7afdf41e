"""Client methods for channels, rollouts, live metrics, resolve and serving checks.

Compare-and-swap: every channel change sends the revision the caller last read. When the
caller does not name one (``expect_revision=None``), :meth:`ChannelsMixin.promote` and
:meth:`ChannelsMixin.rollback` read the channel first and send its current revision, so two
pipelines promoting at once get one success and one :class:`registry.errors.Conflict` (HTTP
409, exit 3), never a silent overwrite. A channel that does not exist yet is expected at
revision 0, the revision the server creates it with: two pipelines creating the same channel
also get one success and one Conflict.

Channel references ``ns/name:chan`` stand for the channel's stable version wherever a version
is read (:meth:`ChannelsMixin.pin_channel`; ``Client.version``, ``Client.pull`` and
:meth:`ChannelsMixin.check` accept them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from registry import errors
from registry.client._core import Core, adapter_path, poll_until, query, version_path
from registry.refs import Ref, check_channel, check_namespace, parse_ref

FINAL_ROLLOUT_STATUSES = frozenset({"promoted", "aborted"})


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


class ChannelsMixin:
    """Channel, rollout, live-metric and resolve methods of :class:`registry.client.Client`."""

    # -- channels ------------------------------------------------------------------------

    def channel(self: Core, ref: str) -> dict[str, Any]:
        """One channel, ``ns/name:chan``: ``{adapter, name, stable, canary,
        canary_weight_bp, rollout_id, profile, protected, base_fingerprint, revision, ...}``."""
        result: dict[str, Any] = self._get(channel_path(ref))
        return result

    def channels(self: Core, adapter: str) -> list[dict[str, Any]]:
        """Every channel of an adapter ``ns/name``."""
        items: list[dict[str, Any]] = self._get(f"{adapter_path(adapter)}/channels")["items"]
        return items

    def configure_channel(
        self: Core, ref: str, profile: str | None = None, protected: bool | None = None,
        expect_revision: int | None = None,
    ) -> dict[str, Any]:
        """Create a channel or set its serving profile (``any``, ``vllm``, ``merged``) and
        protection (admins only). Setting values is idempotent, so no revision is read first;
        pass ``expect_revision`` to make the change conditional."""
        body: dict[str, Any] = {"profile": profile, "protected": protected,
                                "expect_revision": expect_revision}
        result: dict[str, Any] = self._send(
            "PUT", channel_path(ref), json={k: v for k, v in body.items() if v is not None},
            idempotent=expect_revision is None,  # a conditional change must not be re-sent
        ).json()
        return result

    def promote(
        self: Core, ref: str, channel: str, *, now: bool = False,
        steps: Sequence[int] = (5, 25, 50, 100), interval_seconds: int = 600,
        gates: Sequence[str] = (), max_failures: int = 0, deadline_seconds: int | None = None,
        min_requests: int = 1, new_base: bool = False, reason: str = "",
        expect_revision: int | None = None,
    ) -> dict[str, Any]:
        """Put version ``ref`` (``ns/name@8``) on ``channel``: at once (``now``) or as a canary
        rollout through ``steps`` (percent) every ``interval_seconds`` behind ``gates``.

        The result is ``{channel: {...revision...}, rollout: {...id...} | None}``. Conflict
        (409) when the channel changed since ``expect_revision`` (read here when None, see the
        module docstring), when a rollout is already active, or the version is yanked.
        """
        version = explicit_version(ref)
        target = f"{version.adapter}:{check_channel(channel)}"
        if expect_revision is None:
            expect_revision = _current_revision(self, target, missing=0)
        body = {
            "version": version.version, "now": now, "steps": list(steps),
            "interval_seconds": interval_seconds, "gates": list(gates),
            "max_failures": max_failures, "deadline_seconds": deadline_seconds,
            "min_requests": min_requests, "new_base": new_base, "reason": reason,
            "expect_revision": expect_revision,
        }
        result: dict[str, Any] = self._post(f"{channel_path(target)}/promote", body)
        return result

    def rollback(
        self: Core, ref: str, to: int | None = None, reason: str = "",
        expect_revision: int | None = None,
    ) -> dict[str, Any]:
        """Make the previous stable version (or version ``to``) of channel ``ref`` stable
        again, aborting a running canary, in one change. Same read-then-CAS as promote."""
        if expect_revision is None:
            expect_revision = _current_revision(self, ref, missing=None)
        body = {"to_version": to, "reason": reason, "expect_revision": expect_revision}
        result: dict[str, Any] = self._post(f"{channel_path(ref)}/rollback", body)
        return result

    def history(self: Core, ref: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every change of channel ``ref``, newest first: ``{revision, action, from_stable,
        to_stable, canary, canary_weight_bp, rollout_id, actor, reason, metrics,
        created_at}``, following cursors."""
        return self._paginate(f"{channel_path(ref)}/history", [], limit)

    # -- rollouts ------------------------------------------------------------------------

    def rollout(self: Core, rollout_id: int) -> dict[str, Any]:
        """One rollout: ``{id, channel, version, status, steps, step_index, weight_bp,
        gates, failures, next_eval_at, reason, ...}``."""
        result: dict[str, Any] = self._get(f"/api/v1/rollouts/{int(rollout_id)}")
        return result

    def rollout_evaluations(self: Core, rollout_id: int) -> list[dict[str, Any]]:
        """Every gate evaluation of a rollout, oldest first: ``{step_index, gate, verdict,
        value, threshold, detail, evaluated_at}``."""
        items: list[dict[str, Any]] = self._get(
            f"/api/v1/rollouts/{int(rollout_id)}/evaluations")["items"]
        return items

    def pause_rollout(self: Core, rollout_id: int, reason: str = "") -> dict[str, Any]:
        """Hold a rollout's canary at its current weight until resumed."""
        return _control(self, rollout_id, "pause", reason)

    def resume_rollout(self: Core, rollout_id: int, reason: str = "") -> dict[str, Any]:
        """Resume a paused rollout; its current step bakes one more interval."""
        return _control(self, rollout_id, "resume", reason)

    def abort_rollout(self: Core, rollout_id: int, reason: str = "") -> dict[str, Any]:
        """Abort a rollout: the canary weight drops to 0, the stable version keeps serving."""
        return _control(self, rollout_id, "abort", reason)

    def wait_rollout(
        self: Core, rollout_id: int, timeout: float | None = None,
        progress: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """Poll a rollout (every 0.2 s, backing off to 2 s) until it is promoted or aborted,
        or ``timeout`` seconds have passed; return the last rollout seen (check its
        ``status``). ``progress`` hears every poll."""
        return poll_until(self, f"/api/v1/rollouts/{int(rollout_id)}", FINAL_ROLLOUT_STATUSES,
                          timeout, progress)

    # -- live metrics --------------------------------------------------------------------

    def report_live(self: Core, reports: Sequence[Mapping[str, Any]]) -> int:
        """Report live serving measurements, batched: each ``{adapter: "ns/name", version: 8,
        requests: N, errors: M, values: {"latency_p95_ms": 123.0}}``. All or nothing; returns
        how many were accepted. Not retried after it may have reached the server (a report
        counted twice would skew the gates)."""
        accepted: int = self._post("/api/v1/metrics/live",
                                   {"reports": [dict(r) for r in reports]})["accepted"]
        return accepted

    # -- resolve and checks --------------------------------------------------------------

    def resolve(self: Core, ref: str, key: str = "") -> dict[str, Any]:
        """The version that serves request ``key`` on channel ``ref`` (sticky per key):
        ``{adapter, channel, ref, version, canary, manifest_digest, files: [{path, digest,
        size, url}]}`` plus ``etag`` (changes whenever the channel does)."""
        r = channel_ref(ref)
        response = self._send("GET", f"/api/v1/resolve/{r.namespace}/{r.name}:{r.channel}",
                              params=query(key=key))
        result: dict[str, Any] = response.json()
        result["etag"] = response.headers.get("etag")
        return result

    def resolve_batch(
        self: Core, channel: str, items: Sequence[str | Mapping[str, str]]
    ) -> list[dict[str, Any]]:
        """Resolve many adapters (or keys) on one channel in one call; ``items`` are adapter
        names ``ns/name`` or ``{"adapter": "ns/name", "key": "user-1"}``. Answers in order."""
        rows = [{"adapter": i} if isinstance(i, str) else dict(i) for i in items]
        result: list[dict[str, Any]] = self._post(
            "/api/v1/resolve", {"channel": check_channel(channel), "items": rows},
            idempotent=True)
        return result

    def resolve_namespace(self: Core, namespace: str, channel: str = "prod"
                          ) -> list[dict[str, Any]]:
        """Every adapter's channel ``channel`` in a namespace (stable, canary, weight,
        revision), so a serving host can preload them."""
        result: list[dict[str, Any]] = self._get(
            f"/api/v1/resolve/{check_namespace(namespace)}",
            query(channel=check_channel(channel)))
        return result

    def check(self: Core, ref: str, profile: str = "vllm") -> dict[str, Any]:
        """Could serving profile ``profile`` load version ``ref`` (``ns/name@N``, ``@latest``
        or a channel's stable ``ns/name:chan``)? ``{ref, profile, ok, problems}``; nothing
        changes."""
        pinned = ChannelsMixin.pin_channel(self, ref)
        result: dict[str, Any] = self._get(f"{version_path(pinned)}/check",
                                           query(profile=profile))
        return result

    def pin_channel(self: Core, ref: str) -> str:
        """A channel reference ``ns/name:chan`` as the explicit ``ns/name@N`` of the
        channel's stable version (NotFound if it has none); other references unchanged."""
        r = parse_ref(ref)
        if r.channel is None:
            return ref
        stable = self._get(channel_path(ref)).get("stable")
        if stable is None:
            raise errors.NotFound(f"channel {ref} has no stable version", ref=ref)
        return f"{r.adapter}@{int(stable)}"


def _current_revision(api: Core, ref: str, missing: int | None) -> int | None:
    """The channel's revision now; ``missing`` if the channel does not exist (yet)."""
    try:
        revision: int = api._get(channel_path(ref))["revision"]
    except errors.NotFound:
        if missing is None:
            raise
        return missing
    return revision


def _control(api: Core, rollout_id: int, action: str, reason: str) -> dict[str, Any]:
    result: dict[str, Any] = api._post(f"/api/v1/rollouts/{int(rollout_id)}/{action}",
                                       {"reason": reason})
    return result
