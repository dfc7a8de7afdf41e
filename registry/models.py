"""SQLAlchemy 2.0 typed ORM tables. Alembic migrations are the only source of the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from registry.statuses import (
    AdapterState,
    BaseVerdict,
    CompatStatus,
    DeliveryStatus,
    GateVerdict,
    JobStatus,
    PausedBy,
    RolloutStatus,
    VersionStatus,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


class StatusType(TypeDecorator[E], Generic[E]):
    """A status column: stored as the member's string (the same VARCHAR as before the enums,
    so no migration), read back as the member; an unknown string is refused on write."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int = 16, **kw: Any) -> None:
        super().__init__(length, **kw)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


# BIGINT primary keys on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

intpk = Annotated[int, mapped_column(BigIntPK, primary_key=True, autoincrement=True)]
timestamp = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow, nullable=False)]
opt_timestamp = Annotated[datetime | None, mapped_column(UTCDateTime(), nullable=True)]
digest = Annotated[str, mapped_column(String(64), nullable=False)]
json_dict = Annotated[dict[str, Any], mapped_column(JSON, nullable=False, default=dict)]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Namespace(Base):
    __tablename__ = "namespaces"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[timestamp]


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    id: Mapped[intpk]
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    # The version counter: taken under a row lock when a version is created (no MAX+1).
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    # Retention (off when None): keep the newest N versions plus any a channel points at.
    keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    namespace: Mapped[Namespace] = relationship(lazy="joined")
    labels: Mapped[list[AdapterLabel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="AdapterLabel.key"
    )

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"


class AdapterLabel(Base):
    __tablename__ = "adapter_labels"

    adapter_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class Blob(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[timestamp]
    # Bumped whenever a client is told it need not upload this blob: garbage collection
    # keeps blobs seen within its grace window, so a push in flight never loses one.
    last_seen_at: Mapped[timestamp]


class BlobHolder(Base):
    """A namespace that may reference and read a blob without uploading it again: it uploaded
    the bytes (proving possession) or one of its versions or merged artifacts refers to it.
    Consulted only when blob dedup is per namespace (``LORAREG_BLOB_DEDUP``)."""

    __tablename__ = "blob_holders"

    namespace_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(
        ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[timestamp]


class BaseModel(Base):
    """A base model: hub id + revision + the fingerprint of its weights. Immutable: one row
    per ``hub_id@revision``; registering other weights under it is a conflict."""

    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("hub_id", "revision"),)

    id: Mapped[intpk]
    hub_id: Mapped[str] = mapped_column(String(256))
    revision: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # zlib-compressed canonical JSON of [name, dtype, shape, sha256] per tensor.
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    tensor_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    # Files uploaded with `base register --upload` ([{path, digest, size}]), else empty.
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]


class AdapterVersion(Base):
    """One immutable version of an adapter."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "number"),
        UniqueConstraint("adapter_id", "manifest_digest", "base_hub_id", "base_revision"),
        UniqueConstraint("adapter_id", "idempotency_key"),
        Index("ix_adapter_versions_base", "base_hub_id", "base_revision"),
    )

    id: Mapped[intpk]
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    number: Mapped[int] = mapped_column(Integer)
    manifest_digest: Mapped[digest]
    peft_config: Mapped[json_dict]
    base_hub_id: Mapped[str] = mapped_column(String(256))
    base_revision: Mapped[str] = mapped_column(String(128))
    base_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="RESTRICT"), nullable=True
    )
    compat_status: Mapped[CompatStatus] = mapped_column(
        StatusType(CompatStatus), default=CompatStatus.UNVERIFIED)
    provenance: Mapped[json_dict]
    pushed_by: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[VersionStatus] = mapped_column(
        StatusType(VersionStatus), default=VersionStatus.ACTIVE)
    yank_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    yanked_at: Mapped[opt_timestamp]
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)
    # A pipeline's retry token: the same key returns the same version (see push_version).
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[timestamp]

    adapter: Mapped[Adapter] = relationship(lazy="joined")
    base_model: Mapped[BaseModel | None] = relationship(lazy="joined")
    files: Mapped[list[VersionFile]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="VersionFile.path"
    )
    labels: Mapped[list[VersionLabel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="VersionLabel.key"
    )


class VersionFile(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest", ondelete="RESTRICT"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class VersionLabel(Base):
    __tablename__ = "version_labels"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class Metric(Base):
    """An eval metric value; rows are appended, never rewritten (the latest wins)."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_version_key", "version_id", "key", "id"),)

    id: Mapped[intpk]
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    dataset: Mapped[str | None] = mapped_column(String(256), nullable=True)
    split: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recorded_by: Mapped[str] = mapped_column(String(128), default="")
    recorded_at: Mapped[timestamp]


class AuditEvent(Base):
    """Append-only audit log: written in the same transaction as each mutation."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_target", "target_type", "target"),
        Index("ix_audit_events_namespace", "namespace", "id"),
    )

    id: Mapped[intpk]
    created_at: Mapped[timestamp]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(512))
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[json_dict]
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiToken(Base):
    """API token ``lrg_<id>_<secret>``: only a hash of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]
    expires_at: Mapped[opt_timestamp]
    revoked_at: Mapped[opt_timestamp]
    last_used_at: Mapped[opt_timestamp]


class Job(Base):
    """A durable unit of work for the workers (merge, ...). See registry.services.jobs."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "run_after"),
        Index("ix_jobs_dedupe", "dedupe_key", "status"),
    )

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[json_dict]
    status: Mapped[JobStatus] = mapped_column(StatusType(JobStatus), default=JobStatus.QUEUED)
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target: Mapped[str] = mapped_column(String(512), default="")
    # Equal keys mean equal work: a second request joins the queued/running job.
    dedupe_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[timestamp]
    lease_expires_at: Mapped[opt_timestamp]
    heartbeat_at: Mapped[opt_timestamp]
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # registry.errors code of the failure (e.g. incompatible_base), for exit codes.
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[timestamp]
    started_at: Mapped[opt_timestamp]
    finished_at: Mapped[opt_timestamp]


class MergedArtifact(Base):
    """A version merged into a base: written only after every file is stored and verified."""

    __tablename__ = "merged_artifacts"
    __table_args__ = (UniqueConstraint("version_id", "base_fingerprint"),)

    id: Mapped[intpk]
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    merged_fingerprint: Mapped[str] = mapped_column(String(64))
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"),
                                               nullable=True)
    created_at: Mapped[timestamp]

    files: Mapped[list[MergedFile]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="MergedFile.path"
    )


class MergedFile(Base):
    __tablename__ = "merged_files"

    artifact_id: Mapped[int] = mapped_column(
        ForeignKey("merged_artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest", ondelete="RESTRICT"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class Channel(Base):
    """A named pointer of an adapter: a stable version and optionally a weighted canary.

    Every change bumps ``revision`` under a compare-and-swap (see registry.services.channels).
    ``change_seq`` is the resolve change feed's mark, set by database triggers on every insert
    and update of the row (and on a rename of its adapter or namespace), whoever writes it:
    see migrations/versions/0009_resolve_feed.py and registry.services.resolve_feed.
    """

    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),
                      Index("ix_channels_change_seq", "change_seq"))

    id: Mapped[intpk]
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(32))
    stable_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), nullable=True)
    canary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), nullable=True)
    canary_weight_bp: Mapped[int] = mapped_column(Integer, default=0)
    rollout_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    profile: Mapped[str] = mapped_column(String(16), default="any")
    protected: Mapped[bool] = mapped_column(default=False)
    base_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    adapter: Mapped[Adapter] = relationship(lazy="joined")
    stable: Mapped[AdapterVersion | None] = relationship(
        foreign_keys=[stable_version_id], lazy="joined")
    canary: Mapped[AdapterVersion | None] = relationship(
        foreign_keys=[canary_version_id], lazy="joined")


class ChannelTombstone(Base):
    """A deleted channel, written by a database trigger, so that the resolve state of every
    process drops it (registry.services.resolve_feed). Channels are not deleted by the API
    today; an operator's ``DELETE`` is seen all the same."""

    __tablename__ = "channel_tombstones"
    __table_args__ = (Index("ix_channel_tombstones_change_seq", "change_seq"),)

    id: Mapped[intpk]
    channel_id: Mapped[int] = mapped_column(BigInteger)
    change_seq: Mapped[int] = mapped_column(BigInteger)


class ResolveFeed(Base):
    """SQLite's change counter for the resolve feed (one row): its triggers take the next
    number for every channel change. PostgreSQL marks changes with transaction ids instead
    and leaves this row alone (registry.services.resolve_feed says why)."""

    __tablename__ = "resolve_feed"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class ChannelEvent(Base):
    """The full history of a channel: who moved it, when, from what to what, and why."""

    __tablename__ = "channel_events"
    __table_args__ = (Index("ix_channel_events_channel", "channel_id", "id"),)

    id: Mapped[intpk]
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    from_stable: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_stable: Mapped[int | None] = mapped_column(Integer, nullable=True)
    canary: Mapped[int | None] = mapped_column(Integer, nullable=True)
    canary_weight_bp: Mapped[int] = mapped_column(Integer, default=0)
    rollout_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[json_dict]
    created_at: Mapped[timestamp]


class Rollout(Base):
    """A canary walk of one version through weighted steps behind metric gates."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_due", "status", "next_eval_at"),)

    id: Mapped[intpk]
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id",
                                                       ondelete="RESTRICT"))
    baseline_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), nullable=True)
    status: Mapped[RolloutStatus] = mapped_column(
        StatusType(RolloutStatus), default=RolloutStatus.PENDING)
    paused_by: Mapped[PausedBy | None] = mapped_column(StatusType(PausedBy), nullable=True)
    steps: Mapped[list[int]] = mapped_column(JSON)
    step_index: Mapped[int] = mapped_column(Integer, default=-1)
    interval_seconds: Mapped[int] = mapped_column(Integer)
    gates: Mapped[list[str]] = mapped_column(JSON)
    max_failures: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    min_requests: Mapped[int] = mapped_column(Integer, default=1)
    step_started_at: Mapped[opt_timestamp]
    next_eval_at: Mapped[opt_timestamp]
    deadline_at: Mapped[opt_timestamp]
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    finished_at: Mapped[opt_timestamp]

    channel: Mapped[Channel] = relationship(lazy="joined")
    version: Mapped[AdapterVersion] = relationship(foreign_keys=[version_id], lazy="joined")


class GateEvaluation(Base):
    """One gate evaluated at one step: the values compared, the threshold and the verdict."""

    __tablename__ = "gate_evaluations"
    __table_args__ = (Index("ix_gate_evaluations_rollout", "rollout_id", "id"),)

    id: Mapped[intpk]
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    step_index: Mapped[int] = mapped_column(Integer)
    gate: Mapped[str] = mapped_column(String(256))
    verdict: Mapped[GateVerdict] = mapped_column(StatusType(GateVerdict))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    evaluated_at: Mapped[timestamp]


class LiveSample(Base):
    """A batch of live serving measurements for one version, as reported by a router."""

    __tablename__ = "live_samples"
    __table_args__ = (Index("ix_live_samples_version", "version_id", "recorded_at"),)

    id: Mapped[intpk]
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id",
                                                       ondelete="CASCADE"))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    # Other measurements (latency_p95_ms, quality, ...): averaged weighted by requests.
    values: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    reporter: Mapped[str] = mapped_column(String(128), default="")
    recorded_at: Mapped[timestamp]


class Webhook(Base):
    """A subscription of a URL to a namespace's events (Standard Webhooks signatures)."""

    __tablename__ = "webhooks"

    id: Mapped[intpk]
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(default=True)
    allow_private: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]


class WebhookEvent(Base):
    """The transactional outbox: written in the same transaction as the change it reports."""

    __tablename__ = "webhook_events"

    id: Mapped[intpk]
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[json_dict]
    created_at: Mapped[timestamp]


class WebhookDelivery(Base):
    """One event for one subscription: retried with backoff, then dead; re-sendable."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[intpk]
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    status: Mapped[DeliveryStatus] = mapped_column(
        StatusType(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[timestamp]
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[opt_timestamp]
    created_at: Mapped[timestamp]


class VersionTensors(Base):
    """The safetensors header of a version's weights (name, dtype, shape per tensor), kept so
    that serving checks (dtype, memory, target modules) need no blob read. Recorded at push;
    versions pushed before it existed get it when a pool first looks at them."""

    __tablename__ = "version_tensors"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    # zlib-compressed canonical JSON of [name, dtype, shape] per tensor.
    tensors: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[timestamp]


class ServingPool(Base):
    """A group of inference engines started alike (one base, one engine configuration) that
    serves the versions its bound channels point at. See registry.services.pools."""

    __tablename__ = "serving_pools"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    id: Mapped[intpk]
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(16))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"))
    # What the engine was started with (`vllm serve MODEL_ID`): adapters must name it.
    model_id: Mapped[str] = mapped_column(String(512))
    served_model_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    architecture: Mapped[str | None] = mapped_column(String(128), nullable=True)
    max_lora_rank: Mapped[int] = mapped_column(Integer)
    max_loras: Mapped[int] = mapped_column(Integer)
    max_cpu_loras: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    # The engine's --lora-target-modules restriction; None: every module it supports.
    target_modules: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    max_adapter_memory: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # How long a version that left the desired set stays loadable (export keeps its folder).
    drain_seconds: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    namespace: Mapped[Namespace] = relationship(lazy="joined")
    base: Mapped[BaseModel] = relationship(lazy="joined")

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"


class PoolBinding(Base):
    """A channel a pool serves: every version the channel serves is in the pool's desired set."""

    __tablename__ = "pool_bindings"

    pool_id: Mapped[int] = mapped_column(
        ForeignKey("serving_pools.id", ondelete="CASCADE"), primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True, index=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]


class PoolPin(Base):
    """A version a pool keeps in its desired set whatever its channels serve."""

    __tablename__ = "pool_pins"

    pool_id: Mapped[int] = mapped_column(
        ForeignKey("serving_pools.id", ondelete="CASCADE"), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[timestamp]


class PoolMember(Base):
    """One stay of a version in a pool's desired set: open (``removed_at`` None) while some
    bound channel serves it or a pin holds it. Closed rows say when a version left, which
    the export's drain period counts from; a version that comes back gets a new row."""

    __tablename__ = "pool_members"
    __table_args__ = (Index("ix_pool_members_pool", "pool_id", "removed_at"),)

    id: Mapped[intpk]
    pool_id: Mapped[int] = mapped_column(ForeignKey("serving_pools.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), index=True)
    added_at: Mapped[timestamp]
    removed_at: Mapped[opt_timestamp]

    version: Mapped[AdapterVersion] = relationship(lazy="joined")


class PoolReplica(Base):
    """One serving replica of a pool as its agent last reported it (a heartbeat replaces the
    whole report). ``drift`` is what was wrong at that heartbeat, kept to notice changes: an
    audit event (and webhook) is written when it or the verdict changes, not per heartbeat.
    See registry.services.residency."""

    __tablename__ = "pool_replicas"
    __table_args__ = (UniqueConstraint("pool_id", "replica_id"),)

    id: Mapped[intpk]
    pool_id: Mapped[int] = mapped_column(ForeignKey("serving_pools.id", ondelete="CASCADE"))
    # The agent's name for its replica (--replica-id): stable across restarts.
    replica_id: Mapped[str] = mapped_column(String(128))
    engine: Mapped[str] = mapped_column(String(32))
    engine_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    agent_version: Mapped[str] = mapped_column(String(64))
    # The fingerprint of the base weights the replica hashed at load time (None: not yet).
    base_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    verdict: Mapped[BaseVerdict] = mapped_column(StatusType(BaseVerdict))
    interval_seconds: Mapped[int] = mapped_column(Integer)
    cache_bytes: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    drift: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    reported_by: Mapped[str] = mapped_column(String(128))
    first_heartbeat_at: Mapped[timestamp]
    last_heartbeat_at: Mapped[timestamp]

    adapters: Mapped[list[ReplicaAdapter]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ReplicaAdapter.served_name")


class ReplicaAdapter(Base):
    """A served name on a replica, as reported: its state since ``since`` (kept while a
    heartbeat reports the same state and digest), the digest the agent verified, and the
    engine's own error text for a failed load."""

    __tablename__ = "replica_adapters"

    pool_replica_id: Mapped[int] = mapped_column(
        ForeignKey("pool_replicas.id", ondelete="CASCADE"), primary_key=True)
    served_name: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[AdapterState] = mapped_column(StatusType(AdapterState))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    since: Mapped[timestamp]
