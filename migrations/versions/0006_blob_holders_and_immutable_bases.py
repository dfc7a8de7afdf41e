"""blob holders per namespace; one base per hub_id@revision

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 19:20:00

``blob_holders`` records which namespaces may reference a blob without uploading it (per-namespace
dedup); it is filled from the versions and merged artifacts that exist. ``base_models`` becomes
unique on ``(hub_id, revision)``: a registered base is immutable. A database that already holds
two registrations of one ``hub_id@revision`` (possible before this release, when the newest won)
is refused with the list, since which one is right is the operator's call.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import registry.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILL = """
INSERT INTO blob_holders (namespace_id, digest, created_at)
SELECT DISTINCT a.namespace_id, f.digest, CURRENT_TIMESTAMP
FROM {files} f
JOIN {join}
JOIN adapters a ON a.id = v.adapter_id
"""


def upgrade() -> None:
    op.create_table(
        "blob_holders",
        sa.Column("namespace_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", registry.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["blobs.digest"],
                                name=op.f("fk_blob_holders_digest_blobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"],
                                name=op.f("fk_blob_holders_namespace_id_namespaces"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("namespace_id", "digest", name=op.f("pk_blob_holders")),
    )
    with op.batch_alter_table("blob_holders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blob_holders_digest"), ["digest"], unique=False)
    op.execute(BACKFILL.format(files="version_files", join="adapter_versions v ON v.id = "
                               "f.version_id"))
    op.execute(BACKFILL.format(
        files="merged_files", join="merged_artifacts m ON m.id = f.artifact_id "
        "JOIN adapter_versions v ON v.id = m.version_id") + " WHERE NOT EXISTS (SELECT 1 FROM "
        "blob_holders h WHERE h.namespace_id = a.namespace_id AND h.digest = f.digest)")
    _refuse_duplicate_bases()
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_base_models_hub_id_revision_fingerprint", type_="unique")
        batch_op.create_unique_constraint(op.f("uq_base_models_hub_id_revision"),
                                          ["hub_id", "revision"])


def _refuse_duplicate_bases() -> None:
    rows = op.get_bind().execute(sa.text(
        "SELECT hub_id, revision, COUNT(*) FROM base_models GROUP BY hub_id, revision "
        "HAVING COUNT(*) > 1")).all()
    if rows:
        names = ", ".join(f"{r[0]}@{r[1]} ({r[2]} registrations)" for r in rows)
        raise RuntimeError(
            f"bases are now immutable, one per hub_id@revision, but these have several: "
            f"{names}. Keep the right one (base_models.id) and re-point or delete the others "
            "before upgrading.")


def downgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_base_models_hub_id_revision", type_="unique")
        batch_op.create_unique_constraint(op.f("uq_base_models_hub_id_revision_fingerprint"),
                                          ["hub_id", "revision", "fingerprint"])
    with op.batch_alter_table("blob_holders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blob_holders_digest"))
    op.drop_table("blob_holders")
