"""residency ledger: serving replicas of pools and the adapters each reports

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 20:00:00

``pool_replicas`` holds one row per replica of a pool as its agent last reported it (engine,
agent version, the fingerprint of the base weights it hashed, the verdict against the pool's
base, heartbeat times, cache bytes, the last error, and the drift found at that heartbeat);
``replica_adapters`` the served names it reports (digest, state, engine error, since when).
Both are new and empty: nothing to backfill, no lock on an existing table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import registry.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _stamp(name: str) -> sa.Column[object]:
    return sa.Column(name, registry.models.UTCDateTime(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "pool_replicas",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("replica_id", sa.String(length=128), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("engine_url", sa.String(length=512), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("cache_bytes", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("drift", sa.JSON(), nullable=False),
        sa.Column("reported_by", sa.String(length=128), nullable=False),
        _stamp("first_heartbeat_at"),
        _stamp("last_heartbeat_at"),
        sa.ForeignKeyConstraint(["pool_id"], ["serving_pools.id"], ondelete="CASCADE",
                                name=op.f("fk_pool_replicas_pool_id_serving_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_replicas")),
        sa.UniqueConstraint("pool_id", "replica_id",
                            name=op.f("uq_pool_replicas_pool_id_replica_id")),
    )
    op.create_table(
        "replica_adapters",
        sa.Column("pool_replica_id", ID, nullable=False),
        sa.Column("served_name", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _stamp("since"),
        sa.ForeignKeyConstraint(["pool_replica_id"], ["pool_replicas.id"], ondelete="CASCADE",
                                name=op.f("fk_replica_adapters_pool_replica_id_pool_replicas")),
        sa.PrimaryKeyConstraint("pool_replica_id", "served_name",
                                name=op.f("pk_replica_adapters")),
    )
    with op.batch_alter_table("replica_adapters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_replica_adapters_served_name"), ["served_name"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("replica_adapters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_replica_adapters_served_name"))
    op.drop_table("replica_adapters")
    op.drop_table("pool_replicas")
