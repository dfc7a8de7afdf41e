"""The residency ledger: what each serving replica of a pool holds, as its agent reports it,
checked against what the pool must serve. Routers, the UI, the Prometheus collector and the
CLI (through the API) only call this module.

* **A heartbeat is the whole report** (:func:`heartbeat`): the replica's engine, agent
  version, the fingerprint of the base weights it hashed at load time, cache bytes, its last
  error and every served name it holds (loaded, loading or failed, with the engine's error).
  Sending the same report again changes nothing but the heartbeat time: it is idempotent.
* **Verdict**: ``compatible`` when the replica's fingerprint equals the pool base's,
  ``incompatible`` (both fingerprints recorded) when it differs, ``unknown`` until it reports
  one. An adapter loaded on an incompatible base is drift.
* **Drift** (:func:`drift_of`): a desired name not loaded ``LIVE_FACTOR`` heartbeat intervals
  after it entered the set (``missing``; before that it is ``pending``), a loaded name neither
  desired nor draining (``extra``; a drained one gets the same grace after its drain ends), a
  load the engine refused (``failed``), and a name reported with a digest other than the one
  the name means (``bytes_differ``: served names carry the digest's first 12 hex digits and
  the registry knows the whole one). Such a name never counts as loaded.
* **Audit only on change**: a heartbeat writes an audit event when the replica's verdict (or
  the fingerprint it reports) changes (``pool.replica_verdict``; webhook
  ``pool.incompatible_base`` when it becomes incompatible) or when its drift changes
  (``pool.replica_drift``; webhook ``pool.drift``, also when the drift clears), never per
  heartbeat.
* **Live** means heard within ``LIVE_FACTOR`` times the interval the agent says it reports at.
  Replicas silent for ``RETIRE_AFTER`` are removed at the next heartbeat of their pool (one
  audit event), so restarted pods under new ids do not pile up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.errors import BadRequest, NotFound
from registry.manifest import DIGEST_RE
from registry.models import (
    Adapter,
    AdapterVersion,
    PoolReplica,
    ReplicaAdapter,
    ServingPool,
    utcnow,
)
from registry.served_names import parse_served_name
from registry.services import audit
from registry.services import desired_sets as sets
from registry.services.context import Actor
from registry.statuses import AdapterState, BaseVerdict, DriftKind

LIVE_FACTOR = 3
MAX_INTERVAL = 300
RETIRE_AFTER = timedelta(days=1)
# A drained version stays acceptable this long after its drain ends, whatever the interval.
MAX_GRACE = timedelta(seconds=LIVE_FACTOR * MAX_INTERVAL)
REPLICA_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")
ENGINE_RE = re.compile(r"^[a-z][a-z0-9._-]{0,31}\Z")


@dataclass
class Reported:
    """One served name as a replica reports it."""

    served_name: str
    state: AdapterState
    digest: str | None = None
    error: str | None = None


@dataclass
class Report:
    """A replica's whole residency, sent at every heartbeat."""

    engine: str
    agent_version: str
    interval_seconds: int
    cache_bytes: int
    adapters: list[Reported] = field(default_factory=list)
    engine_url: str | None = None
    base_fingerprint: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    served_name: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "served_name": self.served_name, "detail": self.detail}


@dataclass
class Expected:
    """What a pool's replicas should hold at ``now``: the desired set (served name -> entry)
    and the versions that left it recently (with ``MAX_GRACE`` past their drain)."""

    pool: ServingPool
    now: datetime
    desired: dict[str, sets.Entry]
    draining: dict[str, sets.Entry]

    def drain_ends(self, entry: sets.Entry) -> datetime:
        assert entry.removed_at is not None
        return entry.removed_at + timedelta(seconds=self.pool.drain_seconds)


@dataclass
class ReplicaView:
    """A replica's last report read against what its pool should hold now."""

    row: PoolReplica
    pool: ServingPool
    live: bool
    age_seconds: float
    refs: dict[str, str]  # served name -> the version it names, for names that name one
    loaded: list[str]  # loaded with the bytes the name means
    pending: list[str]  # desired, not loaded yet, still within the grace
    drift: list[Drift]


@dataclass
class PoolStatus:
    pool: ServingPool
    revision: str
    expected: Expected
    replicas: list[ReplicaView]

    @property
    def drift_versions(self) -> list[str]:
        """Served names with drift on some live replica."""
        return sorted({d.served_name for r in self.replicas if r.live for d in r.drift})


@dataclass
class Holder:
    """One replica holding a version (``lorareg where``)."""

    pool: ServingPool
    view: ReplicaView
    adapter: ReplicaAdapter


# --- heartbeats -----------------------------------------------------------------------------


def heartbeat(session: Session, actor: Actor, pool: ServingPool, replica_id: str,
              report: Report, now: datetime | None = None) -> ReplicaView:
    """Record ``report`` as the whole residency of replica ``replica_id`` of ``pool``;
    idempotent. Audited only when the verdict or the drift changes (see the module doc)."""
    _check(replica_id, report)
    now = now or utcnow()
    row, created = _upsert(session, actor, pool, replica_id, report, now)
    before = None if created else (row.verdict, row.base_fingerprint)
    _record_verdict(session, actor, pool, row, before, _verdict(pool, report.base_fingerprint))
    _replace_adapters(row, report.adapters, now)
    session.flush()
    view = _view(session, row, expected(session, pool, now))
    _record_drift(session, actor, pool, row, view.drift)
    _retire(session, actor, pool, now)
    return view


def _check(replica_id: str, report: Report) -> None:
    if not REPLICA_ID_RE.match(replica_id):
        raise BadRequest("a replica id is 1..128 letters, digits and . _ : @ - (starting with "
                         f"a letter or digit), not {replica_id!r}")
    if not ENGINE_RE.match(report.engine):
        raise BadRequest(f"engine {report.engine!r} is not a name like vllm")
    if report.base_fingerprint is not None and not DIGEST_RE.match(report.base_fingerprint):
        raise BadRequest("base_fingerprint is 64 lower-case hex digits (or null: not yet)")
    if report.engine_url is not None and not re.match(r"^https?://[^\s]+\Z",
                                                       report.engine_url):
        raise BadRequest("engine_url is an http:// or https:// URL")
    if not 1 <= report.interval_seconds <= MAX_INTERVAL:
        raise BadRequest(f"interval_seconds is between 1 and {MAX_INTERVAL}")
    names = [a.served_name for a in report.adapters]
    if len(names) != len(set(names)):
        raise BadRequest("each served name is reported once")
    for a in report.adapters:
        _check_adapter(a)


def _check_adapter(a: Reported) -> None:
    if a.digest is not None and not DIGEST_RE.match(a.digest):
        raise BadRequest(f"{a.served_name}: digest is 64 lower-case hex digits")
    if a.state == AdapterState.LOADED and a.digest is None:
        raise BadRequest(f"{a.served_name}: a loaded name needs the digest the agent verified")
    if not a.served_name or not a.served_name.isprintable():
        raise BadRequest("a served name is printable and not empty")


def _upsert(session: Session, actor: Actor, pool: ServingPool, replica_id: str,
            report: Report, now: datetime) -> tuple[PoolReplica, bool]:
    """The replica's row, locked and filled with ``report``; whether it is new."""
    row = _locked(session, pool, replica_id)
    if row is None:
        row = PoolReplica(pool_id=pool.id, replica_id=replica_id, first_heartbeat_at=now,
                          verdict=BaseVerdict.UNKNOWN, drift=[], adapters=[])
        _fill(row, actor, report, now)
        try:
            with session.begin_nested():
                session.add(row)
            return row, True
        except IntegrityError:  # the same replica's retried heartbeat got there first
            row = _locked(session, pool, replica_id)
            assert row is not None
    _fill(row, actor, report, now)
    return row, False


def _locked(session: Session, pool: ServingPool, replica_id: str) -> PoolReplica | None:
    return session.scalar(select(PoolReplica).where(
        PoolReplica.pool_id == pool.id, PoolReplica.replica_id == replica_id)
        .with_for_update().execution_options(populate_existing=True))


def _fill(row: PoolReplica, actor: Actor, report: Report, now: datetime) -> None:
    row.engine, row.engine_url = report.engine, report.engine_url
    row.agent_version, row.interval_seconds = report.agent_version, report.interval_seconds
    row.cache_bytes, row.last_error = report.cache_bytes, report.error
    row.reported_by, row.last_heartbeat_at = actor.name, now


def _verdict(pool: ServingPool, fingerprint: str | None) -> tuple[BaseVerdict, str | None]:
    if fingerprint is None:
        return BaseVerdict.UNKNOWN, None
    if fingerprint == pool.base.fingerprint:
        return BaseVerdict.COMPATIBLE, fingerprint
    return BaseVerdict.INCOMPATIBLE, fingerprint


def _record_verdict(session: Session, actor: Actor, pool: ServingPool, row: PoolReplica,
                    before: tuple[BaseVerdict, str | None] | None,
                    verdict: tuple[BaseVerdict, str | None]) -> None:
    """Set the verdict; audited when it or the replica's fingerprint changes, or the replica
    is new (``from`` null)."""
    row.verdict, row.base_fingerprint = verdict
    if before == verdict:
        return
    audit.record(session, actor, "pool.replica_verdict", "pool", pool.full_name,
                 namespace=pool.namespace.name,
                 payload={"replica": row.replica_id, "from": before and before[0],
                          "verdict": verdict[0],
                          "replica_fingerprint": verdict[1],
                          "pool_fingerprint": pool.base.fingerprint})


def _replace_adapters(row: PoolReplica, reported: Sequence[Reported], now: datetime) -> None:
    """The reported names become the replica's; one whose state and digest did not change
    keeps its ``since``."""
    old = {a.served_name: a for a in row.adapters}
    rows = []
    for r in reported:
        kept = old.get(r.served_name)
        if kept is None:
            kept = ReplicaAdapter(served_name=r.served_name, since=now)
        elif (kept.state, kept.digest) != (r.state, r.digest):
            kept.since = now
        kept.state, kept.digest, kept.error = r.state, r.digest, r.error
        rows.append(kept)
    row.adapters = rows


def _record_drift(session: Session, actor: Actor, pool: ServingPool, row: PoolReplica,
                  found: list[Drift]) -> None:
    before = {(d["kind"], d["served_name"]) for d in row.drift}
    row.drift = [d.as_dict() for d in found]
    if before == {(d.kind.value, d.served_name) for d in found}:
        return  # the same problems (an engine's error text may change between heartbeats)
    audit.record(session, actor, "pool.replica_drift", "pool", pool.full_name,
                 namespace=pool.namespace.name,
                 payload={"replica": row.replica_id, "drift": row.drift,
                          "resolved": not found})


def _retire(session: Session, actor: Actor, pool: ServingPool, now: datetime) -> None:
    # RETURNING: two heartbeats retiring at once each record only the rows they deleted.
    gone = list(session.scalars(delete(PoolReplica).where(
        PoolReplica.pool_id == pool.id, PoolReplica.last_heartbeat_at < now - RETIRE_AFTER)
        .returning(PoolReplica.replica_id), execution_options={"synchronize_session": False}))
    if not gone:
        return
    audit.record(session, actor, "pool.replicas_retired", "pool", pool.full_name,
                 namespace=pool.namespace.name,
                 payload={"replicas": sorted(gone), "silent_for": str(RETIRE_AFTER)})


def forget(session: Session, actor: Actor, pool: ServingPool, replica_id: str) -> None:
    """Remove a replica from the ledger (it was decommissioned); NotFound if unknown."""
    row = _locked(session, pool, replica_id)
    if row is None:
        raise NotFound(f"pool {pool.full_name} has no replica {replica_id!r}")
    session.delete(row)
    session.flush()
    audit.record(session, actor, "pool.replica_forgotten", "pool", pool.full_name,
                 namespace=pool.namespace.name, payload={"replica": replica_id})


# --- reading --------------------------------------------------------------------------------


def expected(session: Session, pool: ServingPool, now: datetime) -> Expected:
    held = sets.retained(session, pool, now - MAX_GRACE)
    return Expected(pool, now, {e.served_name: e for e in held if e.removed_at is None},
                    {e.served_name: e for e in held if e.removed_at is not None})


def replicas(session: Session, pool: ServingPool) -> list[PoolReplica]:
    return list(session.scalars(select(PoolReplica).where(PoolReplica.pool_id == pool.id)
                                .order_by(PoolReplica.replica_id)))


def status(session: Session, pool: ServingPool, now: datetime | None = None) -> PoolStatus:
    """Every replica of ``pool`` read against what it should hold now."""
    now = now or utcnow()
    want = expected(session, pool, now)
    return PoolStatus(pool, sets.revision(session, pool, now), want,
                      [_view(session, r, want) for r in replicas(session, pool)])


def where(session: Session, version: AdapterVersion, now: datetime | None = None
          ) -> list[Holder]:
    """The replicas that report ``version``'s served name, in pools of its namespace (another
    tenant's pools are not shown, whatever they report), by pool and replica."""
    now = now or utcnow()
    name = sets.served(version)
    rows = session.execute(
        select(ReplicaAdapter, PoolReplica, ServingPool)
        .join(PoolReplica, PoolReplica.id == ReplicaAdapter.pool_replica_id)
        .join(ServingPool, ServingPool.id == PoolReplica.pool_id)
        .where(ReplicaAdapter.served_name == name,
               ServingPool.namespace_id == version.adapter.namespace_id)
        .order_by(ServingPool.name, PoolReplica.replica_id)).all()
    wanted: dict[int, Expected] = {}
    found = []
    for adapter, replica, pool in rows:
        if pool.id not in wanted:
            wanted[pool.id] = expected(session, pool, now)
        found.append(Holder(pool, _view(session, replica, wanted[pool.id]), adapter))
    return found


def pools_holding(session: Session, version: AdapterVersion, now: datetime | None = None
                  ) -> tuple[list[ServingPool], list[ServingPool]]:
    """The pools of ``version``'s namespace whose desired set holds it, and those draining it."""
    now = now or utcnow()
    desired: list[ServingPool] = []
    draining: list[ServingPool] = []
    for pool in session.scalars(select(ServingPool).where(
            ServingPool.namespace_id == version.adapter.namespace_id)
            .order_by(ServingPool.name)):
        for entry in sets.retained(session, pool, now):
            if entry.version.id == version.id:
                (desired if entry.removed_at is None else draining).append(pool)
    return desired, draining


def fleet(session: Session, now: datetime | None = None) -> list[PoolStatus]:
    """The status of every pool that has replicas (for the Prometheus gauges)."""
    now = now or utcnow()
    pools = session.scalars(select(ServingPool).where(ServingPool.id.in_(
        select(PoolReplica.pool_id).distinct())).order_by(ServingPool.id))
    return [status(session, pool, now) for pool in pools]


# --- drift ----------------------------------------------------------------------------------


def _view(session: Session, row: PoolReplica, want: Expected) -> ReplicaView:
    age = max(0.0, (want.now - row.last_heartbeat_at).total_seconds())
    live = age <= LIVE_FACTOR * row.interval_seconds
    named = _named_versions(session, want, [a.served_name for a in row.adapters])
    loaded, pending, found = drift_of(row, want, named)
    refs = {name: sets.ref(v) for name, v in named.items()}
    return ReplicaView(row, want.pool, live, age, refs, loaded, pending, found)


def _named_versions(session: Session, want: Expected, names: Iterable[str]
                    ) -> dict[str, AdapterVersion]:
    """The version each name means, among names of the pool's namespace (a name of another
    namespace, or one that names no version here, means none)."""
    known = {n: e.version for n, e in (*want.desired.items(), *want.draining.items())}
    found = {n: known[n] for n in names if n in known}
    wanted: dict[tuple[str, int], str] = {}
    for name in set(names) - found.keys():
        parsed = _parse(name)
        if parsed is not None and parsed[0] == want.pool.namespace.name:
            wanted[(parsed[1], parsed[2])] = name
    if wanted:
        for v in session.scalars(select(AdapterVersion).join(Adapter).where(
                Adapter.namespace_id == want.pool.namespace_id,
                Adapter.name.in_({a for a, _ in wanted}),
                AdapterVersion.number.in_({n for _, n in wanted}))):
            asked = wanted.get((v.adapter.name, v.number))
            if asked is not None and sets.served(v) == asked:  # its digest part too
                found[asked] = v
    return found


def _parse(name: str) -> tuple[str, str, int, str] | None:
    try:
        return parse_served_name(name)
    except BadRequest:
        return None


def _meant(name: str, version: AdapterVersion | None) -> str | None:
    """The digest ``name`` means: the whole one of the version it names, else the 12 hex
    digits it carries (a served name), else none."""
    if version is not None:
        return version.manifest_digest
    parsed = _parse(name)
    return parsed[3] if parsed is not None else None


def drift_of(row: PoolReplica, want: Expected, named: dict[str, AdapterVersion]
             ) -> tuple[list[str], list[str], list[Drift]]:
    """``(loaded, pending, drift)`` of a replica's report against ``want``."""
    grace = timedelta(seconds=LIVE_FACTOR * row.interval_seconds)
    incompatible = row.verdict == BaseVerdict.INCOMPATIBLE
    loaded, found = [], []
    for a in row.adapters:
        problem = _problem(a, named.get(a.served_name), want, grace, incompatible)
        if problem is not None:
            found.append(problem)
        elif a.state == AdapterState.LOADED:
            loaded.append(a.served_name)
    pending = []
    if not incompatible:
        held = {a.served_name for a in row.adapters}
        for name, entry in sorted(want.desired.items()):
            if name in held:
                continue
            if entry.added_at is not None and want.now - entry.added_at > grace:
                found.append(Drift(DriftKind.MISSING, name, "desired, not reported"))
            else:
                pending.append(name)
    return loaded, pending, found


def _problem(a: ReplicaAdapter, version: AdapterVersion | None, want: Expected,
             grace: timedelta, incompatible: bool) -> Drift | None:
    name = a.served_name
    if a.state == AdapterState.FAILED:
        return Drift(DriftKind.FAILED, name, a.error or "the engine refused it (no error text)")
    if (meant := _meant(name, version)) is not None and a.digest is not None and not (
            a.digest.startswith(meant)):
        return Drift(DriftKind.BYTES_DIFFER, name,
                     f"bytes differ: reported digest {a.digest}, the name means {meant}")
    if incompatible:
        return Drift(DriftKind.INCOMPATIBLE_BASE, name, "held on a base the pool does not run")
    if a.state != AdapterState.LOADED or name in want.desired:
        return None
    draining = want.draining.get(name)
    if draining is not None and want.now <= want.drain_ends(draining) + grace:
        return None
    why = ("left the desired set, drain over" if draining is not None or version is not None
           else "names no version of this pool's namespace")
    return Drift(DriftKind.EXTRA, name, why)

