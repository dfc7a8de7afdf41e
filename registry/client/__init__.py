"""Python SDK over the lorareg REST API (synchronous, httpx).

Usage::

    with Client("http://127.0.0.1:8080", token) as registry:
        v = registry.push("out/adapter", "acme/support-bot", base="org/base@<commit>")
        print(v.ref, v.created, v.uploaded_bytes)
        registry.pull("acme/support-bot@latest", Path("adapter"))

Answers are pydantic models: the API's own response models (:mod:`registry.wire`, re-exported
here: ``VersionOut``, ``ChannelOut``, ``JobOut``, ...) and, where the client adds what it did,
their extensions (``PushResult``, ``PulledVersion``, ``RegisteredBase``, ...).
``model.model_dump(mode="json")`` is the JSON the server sent (plus those additions).

Errors: every non-2xx answer is raised as the matching :mod:`registry.errors` class, rebuilt
from the problem document (so ``err.exit_code`` is the CLI exit code and ``err.extra`` holds
the helpful fields). A server that cannot be reached raises :class:`RegistryError` itself
(exit code 6) with a ``cannot reach <url>: ...`` detail. Retries: see
:mod:`registry.client._http`.

Progress: ``push``, ``pull`` and base registration accept either a callable receiving byte
increments (negative when a retried upload starts over) or a tqdm-like object; the latter first
gets ``reset(total=<bytes to transfer>)``, so one bar covers the whole transfer.

Everything public is exported here; the modules behind it are private: ``_http`` (the core
every call goes through), ``_transport`` (blob bodies over urllib3), ``_retry`` (backoff),
``_transfer`` (local files, progress, the verified resumable download), ``_results``, and one
module per resource family (``_adapters``, ``_versions``, ``_blobs``, ``_bases``, ``_jobs``,
``_channels``, ``_ops``, ``_pools``, ``_admin``).
"""

from __future__ import annotations

from registry.client._blobs import body_chunks
from registry.client._client import Client
from registry.client._jobs import job_error
from registry.client._paths import channel_ref, explicit_version
from registry.client._pools import ReportedAdapter, Residency
from registry.client._results import (
    Compatibility,
    PulledArtifact,
    PulledVersion,
    PushResult,
    RegisteredBase,
    RegisteredSnapshot,
    Resolved,
)
from registry.client._retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after
from registry.client._transfer import (
    CHUNK,
    LocalFile,
    Progress,
    ProgressBar,
    iter_folder,
    scan_folder,
    sha256_file,
)
from registry.client._versions import metric_rows
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
    DesiredOut,
    DriftOut,
    FileOut,
    GateEvaluationOut,
    GcReportOut,
    Health,
    HeartbeatOut,
    JobOut,
    ManifestOut,
    MemberOut,
    MergeOut,
    MetricOut,
    MetricsOut,
    NamespaceOut,
    PingQueued,
    PoolCheckOut,
    PoolDetailOut,
    PoolOut,
    PoolStatusOut,
    PoolVersionOut,
    PromoteOut,
    ReplicaAdapterOut,
    ReplicaOut,
    ResolvedFile,
    ResolveOut,
    RetentionReportOut,
    RolloutOut,
    ServerVersion,
    TokenOut,
    VersionOut,
    WebhookOut,
    WhereOut,
    WhereReplicaOut,
    WhoAmI,
)

__all__ = [
    "CHUNK",
    "MAX_RETRY_AFTER",
    "AdapterOut",
    "ArtifactOut",
    "AuditOut",
    "BaseOut",
    "BaseRefOut",
    "BlobOut",
    "ChannelEventOut",
    "ChannelOut",
    "CheckOut",
    "Client",
    "Compatibility",
    "DeliveryOut",
    "DesiredOut",
    "DriftOut",
    "FileOut",
    "GateEvaluationOut",
    "GcReportOut",
    "Health",
    "HeartbeatOut",
    "JobOut",
    "LocalFile",
    "ManifestOut",
    "MemberOut",
    "MergeOut",
    "MetricOut",
    "MetricsOut",
    "NamespaceOut",
    "PingQueued",
    "PoolCheckOut",
    "PoolDetailOut",
    "PoolOut",
    "PoolStatusOut",
    "PoolVersionOut",
    "Progress",
    "ProgressBar",
    "PromoteOut",
    "PulledArtifact",
    "PulledVersion",
    "PushResult",
    "RegisteredBase",
    "RegisteredSnapshot",
    "ReplicaAdapterOut",
    "ReplicaOut",
    "ReportedAdapter",
    "Residency",
    "ResolveOut",
    "Resolved",
    "ResolvedFile",
    "RetentionReportOut",
    "RetryPolicy",
    "RolloutOut",
    "ServerVersion",
    "TokenOut",
    "VersionOut",
    "WebhookOut",
    "WhereOut",
    "WhereReplicaOut",
    "WhoAmI",
    "body_chunks",
    "channel_ref",
    "explicit_version",
    "iter_folder",
    "job_error",
    "metric_rows",
    "parse_retry_after",
    "scan_folder",
    "sha256_file",
]
