"""Request bodies, and the response models of :mod:`registry.wire` built from rows.

Inputs forbid unknown fields (a typo is an error, not a no-op). Responses are defined once, in
:mod:`registry.wire` (the client parses the same models); they are re-exported here so routers
name every body through this module, and the functions below (``version_out``, ``job_out``,
...) build them from ORM rows, which the wire module must not know.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.models import (
    Adapter,
    AdapterVersion,
    ApiToken,
    AuditEvent,
    Channel,
    ChannelEvent,
    Job,
    MergedArtifact,
    Metric,
    Namespace,
    Rollout,
    Webhook,
    WebhookDelivery,
)
from registry.models import BaseModel as BaseModelRow
from registry.services.versions import StoredConfig
from registry.statuses import RolloutStatus
from registry.wire import (
    AdapterOut,
    ArtifactOut,
    AuditOut,
    BaseOut,
    BaseRefOut,
    BlobOut,
    ChannelEventOut,
    ChannelOut,
    CheckOut,
    DeliveryOut,
    FileOut,
    GateEvaluationOut,
    GcReportOut,
    Health,
    Items,
    JobOut,
    LiveAccepted,
    ManifestOut,
    MergeOut,
    MetricOut,
    MetricsOut,
    MissingOut,
    NamespaceOut,
    Page,
    PingQueued,
    PromoteOut,
    ResolvedFile,
    ResolveOut,
    RetentionReportOut,
    RolloutOut,
    ServerVersion,
    TensorRow,
    TokenOut,
    VersionOut,
    WebhookOut,
    WhoAmI,
)

__all__ = [
    "AdapterOut", "ArtifactOut", "AuditOut", "BaseOut", "BaseRefOut", "BlobOut",
    "ChannelEventOut", "ChannelOut", "CheckOut", "DeliveryOut", "FileOut", "GateEvaluationOut",
    "GcReportOut", "Health", "Items", "JobOut", "LiveAccepted", "ManifestOut", "MergeOut",
    "MetricOut", "MetricsOut", "MissingOut", "NamespaceOut", "Page", "PingQueued", "PromoteOut",
    "ResolveOut", "ResolvedFile", "RetentionReportOut", "RolloutOut", "ServerVersion",
    "TensorRow", "TokenOut", "VersionOut", "WebhookOut", "WhoAmI",
]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamespaceIn(In):
    name: str = Field(max_length=64)
    description: str = Field("", max_length=4096)


class AdapterPatch(In):
    description: str | None = Field(None, max_length=4096)
    labels: dict[str, str] | None = None
    remove_labels: list[str] = Field(default_factory=list, max_length=64)


class FileIn(In):
    path: str = Field(max_length=512)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BaseRefIn(In):
    hub_id: str = Field(max_length=256)
    revision: str = Field(max_length=128)


class MetricIn(In):
    key: str = Field(max_length=128)
    value: float
    dataset: str | None = Field(None, max_length=256)
    split: str | None = Field(None, max_length=64)


class ProvenanceIn(In):
    git_commit: str | None = Field(None, max_length=2048)
    git_repo: str | None = Field(None, max_length=2048)
    ci_run_url: str | None = Field(None, max_length=2048)
    ci_job: str | None = Field(None, max_length=2048)
    source: str | None = Field(None, max_length=2048)


class VersionIn(In):
    files: list[FileIn] = Field(min_length=1, max_length=1000)
    base: BaseRefIn
    metrics: list[MetricIn] = Field(default_factory=list, max_length=1000)
    labels: dict[str, str] = Field(default_factory=dict)
    provenance: ProvenanceIn = Field(default_factory=ProvenanceIn)
    description: str | None = Field(None, max_length=4096)
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)


class YankIn(In):
    reason: str = Field(min_length=1, max_length=2048)


class UnyankIn(In):
    reason: str = Field("", max_length=2048)


class MetricsIn(In):
    metrics: list[MetricIn] = Field(min_length=1, max_length=1000)


class DigestsIn(In):
    digests: list[str] = Field(max_length=10000)


class TokenIn(In):
    name: str = Field(min_length=1, max_length=128)
    role: Literal["reader", "writer", "promoter", "curator", "admin"]  # = registry.roles
    namespace: str | None = Field(None, max_length=64)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class MergeIn(In):
    base_id: int | None = None


class ChannelConfigIn(In):
    profile: Literal["any", "vllm", "merged"] | None = None
    protected: bool | None = None
    expect_revision: int | None = None


class PromoteIn(In):
    version: int = Field(ge=1)
    now: bool = False
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], max_length=20)
    interval_seconds: int = Field(600, ge=1, le=7 * 86400)
    gates: list[str] = Field(default_factory=list, max_length=20)
    max_failures: int = Field(0, ge=0, le=100)
    deadline_seconds: int | None = Field(None, ge=1)
    min_requests: int = Field(1, ge=0)
    new_base: bool = False
    expect_revision: int | None = None
    reason: str = Field("", max_length=2048)


class RollbackIn(In):
    to_version: int | None = Field(None, ge=1)
    expect_revision: int | None = None
    reason: str = Field("", max_length=2048)


class ControlIn(In):
    reason: str = Field("", max_length=2048)


class LiveReportIn(In):
    adapter: str = Field(max_length=200)
    version: int = Field(ge=1)
    requests: int = Field(ge=0)
    errors: int = Field(0, ge=0)
    values: dict[str, float] = Field(default_factory=dict)


class LiveIn(In):
    reports: list[LiveReportIn] = Field(min_length=1, max_length=1000)


class ResolveItemIn(In):
    adapter: str = Field(max_length=200)
    key: str = Field("", max_length=1024)


class ResolveBatchIn(In):
    channel: str = Field(max_length=32)
    items: list[ResolveItemIn] = Field(min_length=1, max_length=1000)


# ------------------------------------------------------------------ rows -> response models


def namespace_out(ns: Namespace) -> NamespaceOut:
    return NamespaceOut(name=ns.name, description=ns.description, created_at=ns.created_at)


def adapter_out(a: Adapter) -> AdapterOut:
    return AdapterOut(
        name=a.full_name, namespace=a.namespace.name, description=a.description,
        labels={lab.key: lab.value for lab in a.labels},
        latest_version=(a.next_version - 1) or None,
        created_at=a.created_at, updated_at=a.updated_at,
    )


def metric_out(m: Metric) -> MetricOut:
    return MetricOut(key=m.key, value=m.value, dataset=m.dataset, split=m.split,
                     recorded_at=m.recorded_at, recorded_by=m.recorded_by)


def version_out(v: AdapterVersion, metrics: dict[str, float], config: StoredConfig,
                created: bool | None = None) -> VersionOut:
    name = v.adapter.full_name
    return VersionOut(
        ref=f"{name}@{v.number}", adapter=name, version=v.number,
        manifest_digest=v.manifest_digest, status=v.status, yank_reason=v.yank_reason,
        base=BaseRefOut(
            hub_id=v.base_hub_id, revision=v.base_revision,
            fingerprint=v.base_model.fingerprint if v.base_model else None,
            compat_status=v.compat_status,
        ),
        files=[FileOut(path=f.path, digest=f.digest, size=f.size) for f in v.files],
        peft_config=config.value, peft_config_error=config.error, metrics=metrics,
        labels={lab.key: lab.value for lab in v.labels}, provenance=v.provenance,
        pushed_by=v.pushed_by, created_at=v.created_at, total_size=v.total_size,
        created=created,
    )


def token_out(t: ApiToken, plaintext: str | None = None) -> TokenOut:
    return TokenOut(id=t.id, name=t.name, role=t.role, namespace=t.namespace,
                    created_by=t.created_by, created_at=t.created_at, expires_at=t.expires_at,
                    revoked_at=t.revoked_at, last_used_at=t.last_used_at, token=plaintext)


def audit_out(e: AuditEvent) -> AuditOut:
    return AuditOut(id=e.id, created_at=e.created_at, actor=e.actor, action=e.action,
                    target_type=e.target_type, target=e.target, namespace=e.namespace,
                    payload=e.payload, request_id=e.request_id)


def base_out(b: BaseModelRow) -> BaseOut:
    return BaseOut(id=b.id, hub_id=b.hub_id, revision=b.revision, fingerprint=b.fingerprint,
                   tensor_count=b.tensor_count, total_bytes=b.total_bytes,
                   files=[FileOut(**f) for f in b.files], created_by=b.created_by,
                   created_at=b.created_at)


def job_out(j: Job) -> JobOut:
    return JobOut(id=j.id, kind=j.kind, status=j.status, target=j.target,
                  namespace=j.namespace, payload=j.payload, attempts=j.attempts,
                  max_attempts=j.max_attempts, progress=j.progress,
                  progress_message=j.progress_message, result=j.result, error=j.error,
                  error_code=j.error_code,
                  worker_id=j.worker_id, cancel_requested=j.cancel_requested,
                  created_by=j.created_by, created_at=j.created_at, started_at=j.started_at,
                  finished_at=j.finished_at)


def artifact_out(a: MergedArtifact, ref: str) -> ArtifactOut:
    return ArtifactOut(
        id=a.id, ref=ref, base_id=a.base_model_id, base_fingerprint=a.base_fingerprint,
        merged_fingerprint=a.merged_fingerprint, total_size=a.total_size,
        files=[FileOut(path=f.path, digest=f.digest, size=f.size) for f in a.files],
        job_id=a.job_id, created_at=a.created_at)


def channel_out(c: Channel) -> ChannelOut:
    return ChannelOut(adapter=c.adapter.full_name, name=c.name,
                      stable=c.stable.number if c.stable else None,
                      canary=c.canary.number if c.canary else None,
                      canary_weight_bp=c.canary_weight_bp, rollout_id=c.rollout_id,
                      profile=c.profile, protected=c.protected,
                      base_fingerprint=c.base_fingerprint, revision=c.revision,
                      updated_at=c.updated_at)


def channel_event_out(e: ChannelEvent) -> ChannelEventOut:
    return ChannelEventOut(
        id=e.id, revision=e.revision, action=e.action, from_stable=e.from_stable,
        to_stable=e.to_stable, canary=e.canary, canary_weight_bp=e.canary_weight_bp,
        rollout_id=e.rollout_id, actor=e.actor, reason=e.reason, metrics=e.metrics,
        created_at=e.created_at)


def rollout_out(r: Rollout) -> RolloutOut:
    step = r.steps[r.step_index] * 100 if 0 <= r.step_index < len(r.steps) else 0
    serving = r.status in (RolloutStatus.PROGRESSING, RolloutStatus.PAUSED)
    return RolloutOut(
        id=r.id, channel=f"{r.channel.adapter.full_name}:{r.channel.name}",
        version=r.version.number, status=r.status, paused_by=r.paused_by, steps=r.steps,
        step_index=r.step_index, weight_bp=step if serving else 0,
        interval_seconds=r.interval_seconds, gates=r.gates, max_failures=r.max_failures,
        failures=r.failures, next_eval_at=r.next_eval_at, deadline_at=r.deadline_at,
        reason=r.reason, created_by=r.created_by, created_at=r.created_at,
        finished_at=r.finished_at)


def webhook_out(h: Webhook, with_secret: bool = False) -> WebhookOut:
    return WebhookOut(id=h.id, namespace=h.namespace, url=h.url, events=h.event_types,
                      active=h.active, allow_private=h.allow_private, created_by=h.created_by,
                      created_at=h.created_at, secret=h.secret if with_secret else None)


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(d, from_attributes=True)
