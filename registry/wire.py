"""What the API answers, as pydantic models: defined once, used by the API as its response
models and parsed by the client (``Model.model_validate(response.json())``).

Pure pydantic: nothing here imports FastAPI or reads the database, so the client (and anything
built on it, e.g. a serving agent) can use these models without the server's dependencies. The
server builds them from its rows in :mod:`registry.api.schemas`. Lists come as a typed
:class:`Page` (cursor-paginated) or :class:`Items` (complete); statuses are the enums of
:mod:`registry.statuses`, which compare equal to their strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from registry.statuses import (
    AdapterState,
    BaseVerdict,
    CompatStatus,
    DeliveryStatus,
    DriftKind,
    GateVerdict,
    JobStatus,
    PausedBy,
    RolloutStatus,
    VersionStatus,
)

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a cursor-paginated list; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None


class Items(BaseModel, Generic[T]):
    """A complete (unpaginated) list."""

    items: list[T]


# ------------------------------------------------------------------------- service, tokens


class Health(BaseModel):
    status: str


class ServerVersion(BaseModel):
    version: str


class WhoAmI(BaseModel):
    actor: str
    role: str
    namespace: str | None
    auth: bool


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    namespace: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    token: str | None = None


class AuditOut(BaseModel):
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target: str
    namespace: str | None
    payload: dict[str, Any]
    request_id: str | None


# ------------------------------------------------------------------ namespaces, adapters


class NamespaceOut(BaseModel):
    name: str
    description: str
    created_at: datetime


class AdapterOut(BaseModel):
    name: str
    namespace: str
    description: str
    labels: dict[str, str]
    latest_version: int | None
    created_at: datetime
    updated_at: datetime


# ------------------------------------------------------------------------------ versions


class FileOut(BaseModel):
    path: str
    digest: str
    size: int


class BaseRefOut(BaseModel):
    hub_id: str
    revision: str
    fingerprint: str | None
    compat_status: CompatStatus


class VersionOut(BaseModel):
    ref: str
    adapter: str
    version: int
    manifest_digest: str
    status: VersionStatus
    yank_reason: str | None
    base: BaseRefOut
    files: list[FileOut]
    # None (with peft_config_error saying why) when the stored config cannot be served: a row
    # an older release stored unchecked degrades this one field, not the listing it is in.
    peft_config: dict[str, Any] | None
    peft_config_error: str | None = None
    metrics: dict[str, float]
    labels: dict[str, str]
    provenance: dict[str, str]
    pushed_by: str
    created_at: datetime
    total_size: int
    created: bool | None = None


class MetricOut(BaseModel):
    key: str
    value: float
    dataset: str | None
    split: str | None
    recorded_at: datetime
    recorded_by: str


class MetricsOut(BaseModel):
    """The values just recorded on a version."""

    metrics: list[MetricOut]


class MissingOut(BaseModel):
    missing: list[str]


class BlobOut(BaseModel):
    digest: str
    size: int


class CheckOut(BaseModel):
    ref: str
    profile: str
    ok: bool
    problems: list[str]


# --------------------------------------------------------------------------------- bases


class BaseOut(BaseModel):
    id: int
    hub_id: str
    revision: str
    fingerprint: str
    tensor_count: int
    total_bytes: int
    files: list[FileOut]
    created_by: str
    created_at: datetime


TensorRow = tuple[str, str, list[int], str]


class ManifestOut(BaseModel):
    fingerprint: str
    tensors: list[TensorRow] = Field(description="[name, dtype, shape, sha256] per tensor")


# ----------------------------------------------------------------------------- jobs, merges


class JobOut(BaseModel):
    id: int
    kind: str
    status: JobStatus
    target: str
    namespace: str | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    progress: float
    progress_message: str
    result: dict[str, Any] | None
    error: str | None
    error_code: str | None
    worker_id: str | None
    cancel_requested: bool
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ArtifactOut(BaseModel):
    id: int
    ref: str
    base_id: int
    base_fingerprint: str
    merged_fingerprint: str
    total_size: int
    files: list[FileOut]
    job_id: int | None
    created_at: datetime


class MergeOut(BaseModel):
    artifact: ArtifactOut | None
    job: JobOut | None
    created: bool


# ------------------------------------------------------------------------ channels, rollouts


class ChannelOut(BaseModel):
    adapter: str
    name: str
    stable: int | None
    canary: int | None
    canary_weight_bp: int
    rollout_id: int | None
    profile: str
    protected: bool
    base_fingerprint: str | None
    revision: int
    updated_at: datetime


class ChannelEventOut(BaseModel):
    id: int
    revision: int
    action: str
    from_stable: int | None
    to_stable: int | None
    canary: int | None
    canary_weight_bp: int
    rollout_id: int | None
    actor: str
    reason: str
    metrics: dict[str, Any]
    created_at: datetime


class GateEvaluationOut(BaseModel):
    step_index: int
    gate: str
    verdict: GateVerdict
    value: float | None
    threshold: float | None
    detail: str
    evaluated_at: datetime


class RolloutOut(BaseModel):
    id: int
    channel: str
    version: int
    status: RolloutStatus
    paused_by: PausedBy | None
    steps: list[int]
    step_index: int
    weight_bp: int
    interval_seconds: int
    gates: list[str]
    max_failures: int
    failures: int
    next_eval_at: datetime | None
    deadline_at: datetime | None
    reason: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class PromoteOut(BaseModel):
    channel: ChannelOut
    rollout: RolloutOut | None


class LiveAccepted(BaseModel):
    accepted: int


class ResolvedFile(BaseModel):
    path: str
    digest: str
    size: int
    url: str


class ResolveOut(BaseModel):
    adapter: str
    channel: str
    ref: str
    version: int
    canary: bool
    manifest_digest: str
    served_name: str = Field(description="the name to send the engine: one per content, never "
                                         "reused (registry.served_names)")
    files: list[ResolvedFile]


# ------------------------------------------------------------------------------ operations


class WebhookOut(BaseModel):
    id: int
    namespace: str
    url: str
    events: list[str]
    active: bool
    allow_private: bool
    created_by: str
    created_at: datetime
    secret: str | None = None


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event_id: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None


class PingQueued(BaseModel):
    event_id: int


class GcReportOut(BaseModel):
    dry_run: bool
    grace_seconds: float
    deleted: list[str]
    bytes_reclaimed: int
    kept_referenced: int
    kept_recent: int
    orphans_deleted: int
    uploads_swept: int


class RetentionReportOut(BaseModel):
    dry_run: bool
    yanked: list[str]


# ---------------------------------------------------------------------------------- pools


class PoolOut(BaseModel):
    name: str
    namespace: str
    engine: str
    base: str
    base_fingerprint: str
    model_id: str
    served_model_name: str | None
    architecture: str | None
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    dtype: str
    target_modules: list[str] | None
    max_adapter_memory: int | None
    drain_seconds: int
    created_by: str
    created_at: datetime
    updated_at: datetime


class PoolDetailOut(PoolOut):
    channels: list[str]
    pinned: list[str]


class MemberOut(BaseModel):
    ref: str
    served_name: str
    manifest_digest: str
    sources: list[str]
    added_at: datetime | None
    removed_at: datetime | None
    ok: bool | None
    problems: list[str] | None
    files: list[FileOut] | None = Field(
        None, description="the version's files, so an agent pulls without another call "
                          "(members and draining versions; not ``left``)")
    drain_ends_at: datetime | None = Field(
        None, description="a draining version: when engines may stop serving it")


class DesiredOut(BaseModel):
    pool: str
    revision: str = Field(description="digest of the whole answer: the ETag; changes only "
                                      "when the answer does")
    base_fingerprint: str = Field(description="the pool base's fingerprint: replicas must "
                                              "hash the same weights")
    model_id: str
    served_model_name: str | None
    drain_seconds: int
    members: list[MemberOut]
    draining: list[MemberOut] = Field(description="versions that left less than "
                                                  "drain_seconds ago: keep them loaded until "
                                                  "drain_ends_at")
    set_problems: list[str] = Field(description="problems of the set as a whole")
    left: list[MemberOut] = Field(description="stays that ended, newest first")


class PoolCheckOut(BaseModel):
    ref: str
    pool: str
    served_name: str
    ok: bool
    problems: list[str]


# ------------------------------------------------------------------------------ residency

#: Limits of a heartbeat (``PUT /api/v1/pools/{ns}/{pool}/replicas/{id}``): served names in one
#: report, and characters of an error text (the client cuts longer engine errors to fit).
MAX_REPORTED_ADAPTERS = 1024
MAX_REPORTED_ERROR = 4096


class DriftOut(BaseModel):
    kind: DriftKind
    served_name: str
    detail: str


class ReplicaAdapterOut(BaseModel):
    served_name: str
    ref: str | None = Field(description="the version the name means in this registry (None: "
                                        "it names none of the pool's namespace)")
    digest: str | None = Field(description="the manifest digest the agent verified")
    state: AdapterState
    error: str | None = Field(description="the engine's own error text of a failed load")
    since: datetime


class ReplicaOut(BaseModel):
    pool: str
    replica_id: str
    engine: str
    engine_url: str | None
    agent_version: str
    verdict: BaseVerdict
    base_fingerprint: str | None = Field(description="what the replica hashed at load time")
    pool_fingerprint: str = Field(description="what the pool's base is")
    interval_seconds: int
    live: bool = Field(description="heard within live_factor x interval_seconds")
    first_heartbeat_at: datetime
    last_heartbeat_at: datetime
    heartbeat_age_seconds: float
    cache_bytes: int
    last_error: str | None
    reported_by: str
    adapters: list[ReplicaAdapterOut]
    loaded: list[str] = Field(description="served names loaded with the bytes they mean")
    pending: list[str] = Field(description="desired names not loaded yet, within the grace")
    drift: list[DriftOut]


class HeartbeatOut(ReplicaOut):
    desired_revision: str = Field(description="the desired set's revision now: fetch it again "
                                              "when it differs from the one you hold")


class PoolVersionOut(BaseModel):
    ref: str
    served_name: str
    manifest_digest: str
    draining: bool
    drain_ends_at: datetime | None


class PoolStatusOut(BaseModel):
    pool: str
    base_fingerprint: str
    model_id: str
    revision: str
    live_factor: int
    versions: list[PoolVersionOut] = Field(description="the desired set, then draining ones")
    replicas: list[ReplicaOut]
    live: int
    verdicts: dict[BaseVerdict, int] = Field(description="live replicas by verdict")
    drift_versions: list[str] = Field(description="served names with drift on a live replica")


class WhereReplicaOut(BaseModel):
    pool: str
    replica_id: str
    live: bool
    verdict: BaseVerdict
    state: AdapterState
    digest: str | None
    bytes_ok: bool = Field(description="the digest reported is the version's")
    since: datetime
    error: str | None
    last_heartbeat_at: datetime


class WhereOut(BaseModel):
    ref: str
    served_name: str
    manifest_digest: str
    desired_in: list[str] = Field(description="pools whose desired set holds the version")
    draining_in: list[str]
    replicas: list[WhereReplicaOut]
