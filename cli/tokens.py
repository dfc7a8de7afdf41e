"""``token create|list|revoke``: API tokens ``lrg_<id>_<secret>``.

``token create --db`` writes straight into the database named by the server's settings
(``LORAREG_DATABASE_URL`` / ``LORAREG_HOME``), which is how the first admin token is made
before any server runs.
"""

from __future__ import annotations

from datetime import timedelta

import click
from pydantic import BaseModel

from cli import output
from cli.app import App, json_option, pass_app
from registry.client import TokenOut
from registry.errors import RegistryError
from registry.roles import ROLES as ROLE_TABLE

ROLES = list(ROLE_TABLE)


class CreatedToken(BaseModel):
    """A token written straight into the database (``--db``): no server answer to show."""

    id: str
    token: str
    name: str
    role: str
    namespace: str | None
    expires_at: str | None


@click.group()
def token() -> None:
    """Create, list and revoke API tokens."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for (e.g. ci-nlp).")
@click.option("--role", type=click.Choice(ROLES), help="Permission set.")
@click.option("--admin", is_flag=True, help="Shorthand for --role admin.")
@click.option("--namespace", help="Limit the token to one namespace.")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire after N days.")
@click.option("--db", "direct", is_flag=True,
              help="Write into the database directly (bootstrap; no server needed).")
@json_option
@pass_app
def create(app: App, name: str, role: str | None, admin: bool, namespace: str | None,
           expires_in_days: int | None, direct: bool) -> None:
    """Create a token. The secret is printed once, alone on stdout, and never again."""
    role = _role(role, admin)
    created: CreatedToken | TokenOut
    if direct:
        created = create_in_database(name, role, namespace, expires_in_days)
    else:
        created = app.client().create_token(name, role, namespace, expires_in_days)
    if app.json:
        output.emit_json(created)
        return
    click.echo(created.token)
    app.note(f"token {created.id} ({created.role}, namespace "
             f"{created.namespace or '*'}) created; store it now, it is not shown again")


def _role(role: str | None, admin: bool) -> str:
    if admin and role not in (None, "admin"):
        raise click.UsageError("--admin conflicts with --role " + str(role))
    if admin:
        return "admin"
    if role is None:
        raise click.UsageError(f"give --role ({', '.join(ROLES)}) or --admin")
    return role


def create_in_database(
    name: str, role: str, namespace: str | None, expires_in_days: int | None,
) -> CreatedToken:
    """Create a token through the service layer, in one transaction of its own."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from registry.config import get_settings
    from registry.db import make_engine, make_session_factory, transaction
    from registry.models import utcnow
    from registry.services.context import Actor
    from registry.services.tokens import create_token

    url = get_settings().effective_database_url
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            row, plaintext = create_token(session, Actor("cli:db"), name=name, role=role,
                                          namespace=namespace, expires_at=expires_at)
            return CreatedToken(
                id=row.id, token=plaintext, name=row.name, role=row.role,
                namespace=row.namespace,
                expires_at=row.expires_at.isoformat() if row.expires_at else None)
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise RegistryError(
            f"cannot create the token in {shown}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]} (is the database migrated? run `lorareg db upgrade`)"
        ) from None
    finally:
        engine.dispose()


@token.command("list")
@json_option
@pass_app
def list_(app: App) -> None:
    """List tokens (secrets are never shown)."""
    rows = app.client().tokens()
    if app.json:
        output.emit_json(rows)
        return
    output.table(
        ["ID", "NAME", "ROLE", "NAMESPACE", "EXPIRES", "LAST USED", "REVOKED"],
        [[r.id, r.name, r.role, r.namespace or "*", output.when(r.expires_at),
          output.when(r.last_used_at), output.when(r.revoked_at)] for r in rows],
    )


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@json_option
@pass_app
def revoke(app: App, token_id: str) -> None:
    """Revoke the token with this id; it stops working at once."""
    app.client().revoke_token(token_id)
    if app.json:
        output.emit_json({"id": token_id, "revoked": True})
    else:
        app.say(f"revoked token {token_id}")
