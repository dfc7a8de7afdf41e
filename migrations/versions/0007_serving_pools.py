"""serving pools, their bindings, pins and desired-set history; version tensor headers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:00:00

``serving_pools`` are engines started alike (one base, one engine configuration), owned by a
namespace. ``pool_bindings`` (channels a pool serves) and ``pool_pins`` (versions it keeps) make
its desired set; ``pool_members`` records each stay of a version in it (``removed_at`` is when it
left, which a drain period counts from). ``version_tensors`` keeps each version's safetensors
header so serving checks need no blob read; existing versions have none until a pool first looks
at them (a migration cannot read the blob store).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import registry.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    referred = target.partition(".")[0]
    return sa.ForeignKeyConstraint([column], [target], ondelete=ondelete,
                                   name=op.f(f"fk_{table}_{column}_{referred}"))


def _stamps(*names: str) -> list[sa.Column[object]]:
    return [sa.Column(n, registry.models.UTCDateTime(), nullable=n == "removed_at")
            for n in names]


def upgrade() -> None:
    op.create_table(
        "serving_pools",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("namespace_id", ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("base_model_id", ID, nullable=False),
        sa.Column("model_id", sa.String(length=512), nullable=False),
        sa.Column("served_model_name", sa.String(length=256), nullable=True),
        sa.Column("architecture", sa.String(length=128), nullable=True),
        sa.Column("max_lora_rank", sa.Integer(), nullable=False),
        sa.Column("max_loras", sa.Integer(), nullable=False),
        sa.Column("max_cpu_loras", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("max_adapter_memory", sa.BigInteger(), nullable=True),
        sa.Column("drain_seconds", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        *_stamps("created_at", "updated_at"),
        _fk("serving_pools", "base_model_id", "base_models.id", "RESTRICT"),
        _fk("serving_pools", "namespace_id", "namespaces.id", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_serving_pools")),
        sa.UniqueConstraint("namespace_id", "name", name=op.f("uq_serving_pools_namespace_id_name")),
    )
    op.create_table(
        "pool_members",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("version_id", ID, nullable=False),
        *_stamps("added_at", "removed_at"),
        _fk("pool_members", "pool_id", "serving_pools.id", "CASCADE"),
        _fk("pool_members", "version_id", "adapter_versions.id", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_members")),
    )
    with op.batch_alter_table("pool_members", schema=None) as batch_op:
        batch_op.create_index("ix_pool_members_pool", ["pool_id", "removed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_pool_members_version_id"), ["version_id"],
                              unique=False)
    op.create_table(
        "pool_pins",
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("version_id", ID, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        *_stamps("created_at"),
        _fk("pool_pins", "pool_id", "serving_pools.id", "CASCADE"),
        _fk("pool_pins", "version_id", "adapter_versions.id", "RESTRICT"),
        sa.PrimaryKeyConstraint("pool_id", "version_id", name=op.f("pk_pool_pins")),
    )
    op.create_table(
        "pool_bindings",
        sa.Column("pool_id", ID, nullable=False),
        sa.Column("channel_id", ID, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        *_stamps("created_at"),
        _fk("pool_bindings", "channel_id", "channels.id", "CASCADE"),
        _fk("pool_bindings", "pool_id", "serving_pools.id", "CASCADE"),
        sa.PrimaryKeyConstraint("pool_id", "channel_id", name=op.f("pk_pool_bindings")),
    )
    with op.batch_alter_table("pool_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pool_bindings_channel_id"), ["channel_id"],
                              unique=False)
    op.create_table(
        "version_tensors",
        sa.Column("version_id", ID, nullable=False),
        sa.Column("tensors", sa.LargeBinary(), nullable=False),
        *_stamps("created_at"),
        _fk("version_tensors", "version_id", "adapter_versions.id", "CASCADE"),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_version_tensors")),
    )


def downgrade() -> None:
    op.drop_table("version_tensors")
    with op.batch_alter_table("pool_bindings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pool_bindings_channel_id"))
    op.drop_table("pool_bindings")
    op.drop_table("pool_pins")
    with op.batch_alter_table("pool_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pool_members_version_id"))
        batch_op.drop_index("ix_pool_members_pool")
    op.drop_table("pool_members")
    op.drop_table("serving_pools")
