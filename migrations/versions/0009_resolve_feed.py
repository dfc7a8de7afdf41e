"""resolve change feed: channels.change_seq, channel_tombstones, resolve_feed, triggers

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 20:00:00

Every API process holds every channel in memory and polls for what changed since its last
look (registry.services.resolve_feed). What changed is marked by the database itself, in the
transaction that changes it, whoever writes (the API, the worker, an operator's SQL):

* ``channels.change_seq``: set on every insert and update of a channel, and on every channel
  of an adapter or namespace that is renamed (or an adapter moved to another namespace);
* ``channel_tombstones``: one row per deleted channel.

The mark is the writing transaction's id on PostgreSQL (``pg_current_xact_id()``, 13 or
later), so concurrent writers take no shared lock: a reader that re-reads every mark at or
above its previous snapshot's ``xmin`` misses no commit, whatever order they commit in. On
SQLite, where writers are serialized anyway, it is the next number of ``resolve_feed``'s one
row. The new column has a constant default (no table rewrite on PostgreSQL 11+) and existing
channels keep 0: a process loads them all at start anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
XID = "pg_current_xact_id()::text::bigint"

POSTGRESQL = [
    f"""CREATE FUNCTION lorareg_channel_mark() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := {XID};
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER channels_change_mark BEFORE INSERT OR UPDATE ON channels
    FOR EACH ROW EXECUTE FUNCTION lorareg_channel_mark()""",
    # A rename re-marks the channels (their BEFORE trigger sets the mark itself).
    """CREATE FUNCTION lorareg_adapter_renamed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE channels SET change_seq = 0 WHERE adapter_id = NEW.id;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER adapters_renamed AFTER UPDATE OF name, namespace_id ON adapters
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
                       OR OLD.namespace_id IS DISTINCT FROM NEW.namespace_id)
    EXECUTE FUNCTION lorareg_adapter_renamed()""",
    """CREATE FUNCTION lorareg_namespace_renamed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE channels SET change_seq = 0
        WHERE adapter_id IN (SELECT id FROM adapters WHERE namespace_id = NEW.id);
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER namespaces_renamed AFTER UPDATE OF name ON namespaces
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION lorareg_namespace_renamed()""",
    f"""CREATE FUNCTION lorareg_channel_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO channel_tombstones (channel_id, change_seq) VALUES (OLD.id, {XID});
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER channels_deleted AFTER DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION lorareg_channel_deleted()""",
]

# SQLite: AFTER triggers (a BEFORE trigger cannot set NEW). The mark is not among the columns
# a channel update must change to fire the trigger (WHEN), so the trigger's own UPDATE does not
# fire it again.
NEXT = "UPDATE resolve_feed SET seq = seq + 1 WHERE id = 1;"
SEQ = "(SELECT seq FROM resolve_feed WHERE id = 1)"
SQLITE = [
    f"""CREATE TRIGGER channels_change_mark_insert AFTER INSERT ON channels BEGIN
        {NEXT} UPDATE channels SET change_seq = {SEQ} WHERE id = NEW.id; END""",
    f"""CREATE TRIGGER channels_change_mark_update AFTER UPDATE ON channels
    WHEN NEW.change_seq IS OLD.change_seq BEGIN
        {NEXT} UPDATE channels SET change_seq = {SEQ} WHERE id = NEW.id; END""",
    f"""CREATE TRIGGER adapters_renamed AFTER UPDATE OF name, namespace_id ON adapters
    WHEN OLD.name IS NOT NEW.name OR OLD.namespace_id IS NOT NEW.namespace_id BEGIN
        {NEXT} UPDATE channels SET change_seq = {SEQ} WHERE adapter_id = NEW.id; END""",
    f"""CREATE TRIGGER namespaces_renamed AFTER UPDATE OF name ON namespaces
    WHEN OLD.name IS NOT NEW.name BEGIN
        {NEXT} UPDATE channels SET change_seq = {SEQ}
        WHERE adapter_id IN (SELECT id FROM adapters WHERE namespace_id = NEW.id); END""",
    f"""CREATE TRIGGER channels_deleted AFTER DELETE ON channels BEGIN
        {NEXT} INSERT INTO channel_tombstones (channel_id, change_seq)
        VALUES (OLD.id, {SEQ}); END""",
]

DROP_POSTGRESQL = [
    "DROP TRIGGER IF EXISTS channels_deleted ON channels",
    "DROP TRIGGER IF EXISTS namespaces_renamed ON namespaces",
    "DROP TRIGGER IF EXISTS adapters_renamed ON adapters",
    "DROP TRIGGER IF EXISTS channels_change_mark ON channels",
    "DROP FUNCTION IF EXISTS lorareg_channel_deleted()",
    "DROP FUNCTION IF EXISTS lorareg_namespace_renamed()",
    "DROP FUNCTION IF EXISTS lorareg_adapter_renamed()",
    "DROP FUNCTION IF EXISTS lorareg_channel_mark()",
]
DROP_SQLITE = [f"DROP TRIGGER IF EXISTS {name}" for name in (
    "channels_deleted", "namespaces_renamed", "adapters_renamed",
    "channels_change_mark_update", "channels_change_mark_insert")]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:  # wait for the channels lock a short while, never behind a long queue
        op.execute("SET LOCAL lock_timeout = '10s'")
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("change_seq", sa.BigInteger(), server_default="0",
                                      nullable=False))
        batch_op.create_index("ix_channels_change_seq", ["change_seq"], unique=False)
    op.create_table(
        "channel_tombstones",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_tombstones")),
    )
    op.create_index("ix_channel_tombstones_change_seq", "channel_tombstones", ["change_seq"])
    feed = op.create_table(
        "resolve_feed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resolve_feed")),
    )
    op.bulk_insert(feed, [{"id": 1, "seq": 0}])
    for statement in POSTGRESQL if postgresql else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in DROP_POSTGRESQL if postgresql else DROP_SQLITE:
        op.execute(statement)
    op.drop_table("resolve_feed")
    op.drop_index("ix_channel_tombstones_change_seq", table_name="channel_tombstones")
    op.drop_table("channel_tombstones")
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.drop_index("ix_channels_change_seq")
        batch_op.drop_column("change_seq")
