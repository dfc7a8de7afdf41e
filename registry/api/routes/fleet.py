"""The residency ledger over HTTP: heartbeats from the agents of serving replicas, a pool's
status (replicas, verdicts, loaded vs desired, drift) and where a version is loaded.

Permissions: a heartbeat needs ``read`` in the pool's namespace. An agent pulls adapters, so
it already holds a token that reads the namespace; requiring more (``promote``, ``write``)
would hand every GPU host a token that can move channels or push. What a heartbeat can
change is the ledger of its own pool's namespace only, as routers' live reports with a
reader token change only their namespace's metrics; each replica row records the token
(``reported_by``) that last wrote it. Forgetting a replica (an operator's act) needs
``promote``. Reading a status or ``where`` needs ``read``; ``where`` lists only pools of the
version's own namespace.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from registry.api import problems
from registry.api import residency_schemas as rs
from registry.api.routes.adapters import ref_of
from registry.models import ServingPool, utcnow
from registry.refs import check_namespace
from registry.services import desired_sets, pools, residency, versions
from registry.web.context import Ctx, CtxDep
from registry.wire import HeartbeatOut, PoolStatusOut, WhereOut

router = APIRouter(prefix="/api/v1", tags=["fleet"])
REPLICA = "/pools/{ns}/{pool}/replicas/{replica_id}"
ReplicaId = Annotated[str, Path(max_length=128)]


def _pool(session: Session, ctx: Ctx, ns: str, pool: str, permission: str) -> ServingPool:
    check_namespace(ns)
    ctx.require(permission, ns)
    return pools.get_pool(session, f"{ns}/{pool}")


@router.put(REPLICA, response_model=HeartbeatOut, responses=problems.responses(404))
def heartbeat(ns: str, pool: str, replica_id: ReplicaId, body: rs.HeartbeatIn, ctx: CtxDep
              ) -> HeartbeatOut:
    """A replica's agent reports its whole residency (idempotent): engine, the fingerprint of
    the base it hashed, every served name it holds with the digest it verified, its state
    and the engine's error. The answer is the replica read against the desired set (verdict,
    loaded, pending, drift) and the set's revision."""
    with ctx.tx() as session:
        row, now = _pool(session, ctx, ns, pool, "read"), utcnow()
        view = residency.heartbeat(session, ctx.actor, row, replica_id, body.report(), now)
        return rs.heartbeat_out(view, desired_sets.revision(session, row, now))


@router.delete(REPLICA, status_code=204, responses=problems.responses(404))
def forget(ns: str, pool: str, replica_id: ReplicaId, ctx: CtxDep) -> None:
    """Remove a decommissioned replica from the ledger (promoters of the namespace). A
    replica silent for a day is removed by itself at its pool's next heartbeat."""
    with ctx.tx() as session:
        residency.forget(session, ctx.actor, _pool(session, ctx, ns, pool, "promote"),
                         replica_id)


@router.get("/pools/{ns}/{pool}/status", response_model=PoolStatusOut,
            responses=problems.responses(404))
def status(ns: str, pool: str, ctx: CtxDep) -> PoolStatusOut:
    """Every replica of the pool: heartbeat age and liveness, verdict with both fingerprints,
    what it reports against the desired and draining versions, and its drift."""
    with ctx.tx() as session:
        return rs.status_out(residency.status(session, _pool(session, ctx, ns, pool, "read")))


@router.get("/where/{ns}/{name}/{sel}", response_model=WhereOut,
            responses=problems.responses(404))
def where(ns: str, name: str, sel: str, ctx: CtxDep) -> WhereOut:
    """Which replicas of which pools (of the version's namespace) hold this version (``sel``:
    a number or ``latest``), in which state and whether with its bytes; and which pools
    want it."""
    check_namespace(ns)
    ctx.require("read", ns)
    with ctx.tx() as session:
        version = versions.get_version(session, ref_of(ns, name, sel))
        now = utcnow()
        desired, draining = residency.pools_holding(session, version, now)
        return rs.where_out(version, residency.where(session, version, now),
                            [p.full_name for p in desired], [p.full_name for p in draining])
