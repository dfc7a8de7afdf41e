"""Tokens, audit log, whoami, health and version."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import __version__
from registry.api import problems
from registry.api import schemas as s
from registry.db import ping
from registry.errors import StorageError
from registry.models import utcnow
from registry.services import audit, tokens
from registry.web.context import CtxDep, State, get_state

router = APIRouter(tags=["admin"])
Limit = Annotated[int, Query(ge=1, le=500)]
StateDep = Annotated[State, Depends(get_state)]


@router.get("/healthz", response_model=s.Health)
def healthz() -> s.Health:
    """Liveness: the process answers."""
    return s.Health(status="ok")


@router.get("/readyz", response_model=s.Health, responses=problems.responses(503))
def readyz(state: StateDep) -> s.Health:
    """Readiness: the database answers and the blob store is reachable."""
    try:
        ping(state.sessions)
    except Exception as exc:
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
    state.store.check()
    return s.Health(status="ready")


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format"}})
def metrics(state: StateDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    body = generate_latest(state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/version", response_model=s.ServerVersion)
def version() -> s.ServerVersion:
    return s.ServerVersion(version=__version__)


@router.get("/api/v1/whoami", response_model=s.WhoAmI)
def whoami(ctx: CtxDep) -> s.WhoAmI:
    p = ctx.principal
    return s.WhoAmI(actor=p.name, role=p.role, namespace=p.namespace,
                    auth=ctx.state.auth_required)


@router.post("/api/v1/tokens", response_model=s.TokenOut, status_code=201)
def create_token(body: s.TokenIn, ctx: CtxDep) -> s.TokenOut:
    """Create a token; the plaintext is in this response only."""
    ctx.require("admin", body.namespace)
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with ctx.tx() as session:
        row, plaintext = tokens.create_token(session, ctx.actor, name=body.name, role=body.role,
                                             namespace=body.namespace, expires_at=expires,
                                             issuer=ctx.principal)
        return s.token_out(row, plaintext)


@router.get("/api/v1/tokens", response_model=s.Page[s.TokenOut])
def list_tokens(ctx: CtxDep) -> s.Page[s.TokenOut]:
    ctx.require("admin", ctx.principal.namespace)
    with ctx.tx() as session:
        rows = tokens.list_tokens(session, namespace=ctx.principal.namespace)
        return s.Page[s.TokenOut](items=[s.token_out(t) for t in rows], next_cursor=None)


@router.delete("/api/v1/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, ctx: CtxDep) -> Response:
    ctx.require("admin", ctx.principal.namespace)
    with ctx.tx() as session:
        tokens.revoke_token(session, ctx.actor, token_id, namespace=ctx.principal.namespace)
    ctx.state.tokens.clear()  # other replicas forget it within the cache's few seconds
    return Response(status_code=204)


@router.get("/api/v1/audit", response_model=s.Page[s.AuditOut])
def list_audit(
    ctx: CtxDep, namespace: str | None = None, target: str | None = None,
    action: str | None = None, actor: str | None = None, cursor: str | None = None,
    limit: Limit = 50,
) -> s.Page[s.AuditOut]:
    with ctx.tx() as session:
        page = audit.list_events(session, namespaces=ctx.principal.scope, namespace=namespace,
                                 target=target, action=action, actor=actor, cursor=cursor,
                                 limit=limit)
        return s.Page[s.AuditOut](items=[s.audit_out(e) for e in page.items],
                                 next_cursor=page.next_cursor)
