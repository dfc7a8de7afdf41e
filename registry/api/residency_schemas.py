"""The heartbeat body of the residency routes (registry/api/routes/fleet.py), and their answers
(defined in :mod:`registry.wire`) built from what :mod:`registry.services.residency` returns.

Limits (a report over them is refused whole, 422, and changes nothing): 1,024 served names,
error texts of 4,096 characters (agents cut an engine's longer error), served names of 256.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from registry.api.schemas import In
from registry.models import AdapterVersion
from registry.services import desired_sets, residency
from registry.statuses import AdapterState, BaseVerdict
from registry.wire import (
    MAX_REPORTED_ADAPTERS,
    MAX_REPORTED_ERROR,
    DriftOut,
    HeartbeatOut,
    PoolStatusOut,
    PoolVersionOut,
    ReplicaAdapterOut,
    ReplicaOut,
    WhereOut,
    WhereReplicaOut,
)

MAX_ADAPTERS = MAX_REPORTED_ADAPTERS
MAX_ERROR = MAX_REPORTED_ERROR


class ReportedIn(In):
    served_name: str = Field(min_length=1, max_length=256)
    state: AdapterState
    digest: str | None = Field(None, max_length=64,
                               description="the manifest digest the agent verified (required "
                                           "when loaded)")
    error: str | None = Field(None, max_length=MAX_ERROR,
                              description="the engine's own error text of a failed load")


class HeartbeatIn(In):
    """A replica's whole residency: sent again in full at every heartbeat."""

    engine: str = Field(max_length=32, description="e.g. vllm")
    engine_url: str | None = Field(None, max_length=512)
    agent_version: str = Field(max_length=64)
    base_fingerprint: str | None = Field(
        None, max_length=64, description="the fingerprint of the base weights the replica "
                                         "hashed at load time; null until it has")
    interval_seconds: int = Field(10, ge=1, le=residency.MAX_INTERVAL,
                                  description="how often this agent reports: the replica is "
                                              "live while heard within 3 intervals")
    cache_bytes: int = Field(0, ge=0, le=2**62)
    error: str | None = Field(None, max_length=MAX_ERROR, description="the agent's last error")
    adapters: list[ReportedIn] = Field(default_factory=list, max_length=MAX_ADAPTERS)

    def report(self) -> residency.Report:
        return residency.Report(
            engine=self.engine, engine_url=self.engine_url, agent_version=self.agent_version,
            base_fingerprint=self.base_fingerprint, interval_seconds=self.interval_seconds,
            cache_bytes=self.cache_bytes, error=self.error,
            adapters=[residency.Reported(a.served_name, a.state, a.digest, a.error)
                      for a in self.adapters])


def replica_out(view: residency.ReplicaView) -> ReplicaOut:
    row = view.row
    return ReplicaOut(
        pool=view.pool.full_name, replica_id=row.replica_id, engine=row.engine,
        engine_url=row.engine_url, agent_version=row.agent_version, verdict=row.verdict,
        base_fingerprint=row.base_fingerprint, pool_fingerprint=view.pool.base.fingerprint,
        interval_seconds=row.interval_seconds, live=view.live,
        first_heartbeat_at=row.first_heartbeat_at, last_heartbeat_at=row.last_heartbeat_at,
        heartbeat_age_seconds=round(view.age_seconds, 3), cache_bytes=row.cache_bytes,
        last_error=row.last_error, reported_by=row.reported_by,
        adapters=[ReplicaAdapterOut(served_name=a.served_name, ref=view.refs.get(a.served_name),
                                    digest=a.digest, state=a.state, error=a.error,
                                    since=a.since) for a in row.adapters],
        loaded=view.loaded, pending=view.pending,
        drift=[DriftOut(**d.as_dict()) for d in view.drift])


def heartbeat_out(view: residency.ReplicaView, revision: str) -> HeartbeatOut:
    return HeartbeatOut(**replica_out(view).model_dump(), desired_revision=revision)


def status_out(st: residency.PoolStatus) -> PoolStatusOut:
    want = st.expected
    versions = [_version_out(e.version, None) for e in want.desired.values()]
    versions += [_version_out(e.version, want.drain_ends(e)) for e in want.draining.values()
                 if want.drain_ends(e) > want.now]
    live = [r for r in st.replicas if r.live]
    verdicts = {v: sum(r.row.verdict == v for r in live) for v in BaseVerdict}
    return PoolStatusOut(
        pool=st.pool.full_name, base_fingerprint=st.pool.base.fingerprint,
        model_id=st.pool.model_id, revision=st.revision, live_factor=residency.LIVE_FACTOR,
        versions=versions, replicas=[replica_out(r) for r in st.replicas], live=len(live),
        verdicts=verdicts, drift_versions=st.drift_versions)


def _version_out(version: AdapterVersion, drain_ends: datetime | None) -> PoolVersionOut:
    return PoolVersionOut(ref=desired_sets.ref(version), served_name=desired_sets.served(version),
                          manifest_digest=version.manifest_digest,
                          draining=drain_ends is not None, drain_ends_at=drain_ends)


def where_out(version: AdapterVersion, holders: list[residency.Holder],
              desired_in: list[str], draining_in: list[str]) -> WhereOut:
    return WhereOut(
        ref=desired_sets.ref(version), served_name=desired_sets.served(version),
        manifest_digest=version.manifest_digest, desired_in=desired_in,
        draining_in=draining_in,
        replicas=[WhereReplicaOut(
            pool=h.pool.full_name, replica_id=h.view.row.replica_id, live=h.view.live,
            verdict=h.view.row.verdict, state=h.adapter.state, digest=h.adapter.digest,
            bytes_ok=h.adapter.digest == version.manifest_digest, since=h.adapter.since,
            error=h.adapter.error, last_heartbeat_at=h.view.row.last_heartbeat_at)
            for h in holders])
