"""API tokens ``lrg_<id>_<secret>``: shown once, stored as sha256 of the secret, compared in
constant time, revocable, optionally expiring. Roles grant permission sets (see ROLES)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import BadRequest, NotFound, PermissionDenied, Unauthenticated
from registry.models import ApiToken, utcnow
from registry.refs import check_namespace
from registry.roles import ROLES
from registry.services import audit
from registry.services.context import Actor

PREFIX = "lrg"
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a role, and one namespace or all (None)."""

    name: str
    role: str
    namespace: str | None
    token_id: str | None = None
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def can(self, permission: str, namespace: str | None = None) -> bool:
        if permission not in ROLES[self.role]:
            return False
        return self.namespace is None or namespace == self.namespace

    @property
    def scope(self) -> list[str] | None:
        """Namespaces this principal may see; None means all."""
        return None if self.namespace is None else [self.namespace]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session, actor: Actor, *, name: str, role: str, namespace: str | None = None,
    expires_at: datetime | None = None, issuer: Principal | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the plaintext, which is never stored.

    ``issuer`` is the principal asking (None: an operator at the database); a token never
    gets rights its issuer lacks, a wider scope, or a life beyond the issuer's expiry."""
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 128 or not name.isprintable():
        raise BadRequest("token name must be 1..128 printable characters")
    if namespace is not None:
        check_namespace(namespace)
    if expires_at is not None and expires_at <= utcnow():
        raise BadRequest("token expiry must be in the future")
    if issuer is not None:
        _check_issuer(issuer, role, namespace, expires_at)
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiToken(id=token_id, name=name, secret_hash=_hash(secret), role=role,
                   namespace=namespace, created_by=actor.name, expires_at=expires_at)
    session.add(row)
    session.flush()
    audit.record(session, actor, "token.created", "token", token_id, namespace=namespace,
                 payload={"name": name, "role": role, "expires_at": _iso(expires_at)})
    return row, f"{PREFIX}_{token_id}_{secret}"


def _check_issuer(issuer: Principal, role: str, namespace: str | None,
                  expires_at: datetime | None) -> None:
    extra = ROLES[role] - ROLES[issuer.role]
    if extra:
        raise PermissionDenied(f"{issuer.name} may not grant {', '.join(sorted(extra))}")
    if issuer.namespace is not None and namespace != issuer.namespace:
        raise PermissionDenied(
            f"{issuer.name} is scoped to {issuer.namespace!r} and may only mint tokens for it")
    if issuer.expires_at is not None and (expires_at is None or expires_at > issuer.expires_at):
        raise BadRequest(
            f"a token minted by {issuer.name} must expire no later than it does "
            f"({issuer.expires_at.isoformat()})", issuer_expires_at=issuer.expires_at.isoformat())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def authenticate(session: Session, plaintext: str) -> Principal:
    """Check a presented token; Unauthenticated with a reason that leaks no secret."""
    prefix, _, rest = plaintext.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not token_id or not secret:
        raise Unauthenticated("malformed token: expected lrg_<id>_<secret>")
    row = session.get(ApiToken, token_id)
    # Compare even when the id is unknown, so timing does not reveal which ids exist.
    expected = row.secret_hash if row else _hash(secrets.token_urlsafe(32))
    if not hmac.compare_digest(expected, _hash(secret)) or row is None:
        raise Unauthenticated("invalid token")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthenticated("token has been revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated("token has expired")
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    return Principal(name=f"token:{row.name}", role=row.role, namespace=row.namespace,
                     token_id=row.id, expires_at=row.expires_at)


def list_tokens(session: Session, *, namespace: str | None = None) -> Sequence[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if namespace is not None:
        stmt = stmt.where(ApiToken.namespace == namespace)
    return list(session.scalars(stmt))


def revoke_token(session: Session, actor: Actor, token_id: str, *,
                 namespace: str | None = None) -> ApiToken:
    """Revoke a token (again: a no-op). ``namespace``: the revoker's, when its token is scoped
    to one; a namespace admin may only revoke that namespace's tokens."""
    row = session.get(ApiToken, token_id, with_for_update=True)
    if row is None:
        raise NotFound(f"token {token_id!r} not found")
    if namespace is not None and row.namespace != namespace:
        raise PermissionDenied("a namespace admin may only revoke that namespace's tokens")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, actor, "token.revoked", "token", token_id, namespace=row.namespace)
    return row
