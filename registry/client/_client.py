"""The :class:`Client` class (see :mod:`registry.client` for its contract).

Each method delegates to the module of its resource family (``_versions``, ``_channels``,
``_bases``, ``_jobs``, ``_ops``, ``_pools``, ``_adapters``, ``_admin``): plain functions over one
:class:`registry.client._http.Http` core, which sends, retries and parses answers into the wire
models of :mod:`registry.wire`. Defaults and documentation live here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from registry.client import (
    _adapters,
    _admin,
    _bases,
    _blobs,
    _channels,
    _jobs,
    _ops,
    _pools,
    _versions,
)
from registry.client._http import Http
from registry.client._pools import Residency
from registry.client._results import (
    Compatibility,
    PulledArtifact,
    PulledVersion,
    PushResult,
    RegisteredBase,
    RegisteredSnapshot,
    Resolved,
)
from registry.client._retry import RetryPolicy
from registry.client._transfer import LocalFile, Progress
from registry.safetensors_io import ADAPTER_LIMITS, HeaderLimits
from registry.vllm_architectures import DEFAULT_MAX_LORA_RANK
from registry.wire import (
    AdapterOut,
    ArtifactOut,
    AuditOut,
    BaseOut,
    BlobOut,
    ChannelEventOut,
    ChannelOut,
    CheckOut,
    DeliveryOut,
    DesiredOut,
    GateEvaluationOut,
    GcReportOut,
    Health,
    HeartbeatOut,
    JobOut,
    ManifestOut,
    MergeOut,
    MetricOut,
    MetricsOut,
    NamespaceOut,
    PingQueued,
    PoolCheckOut,
    PoolDetailOut,
    PoolOut,
    PoolStatusOut,
    PromoteOut,
    ResolveOut,
    RetentionReportOut,
    RolloutOut,
    ServerVersion,
    TokenOut,
    VersionOut,
    WebhookOut,
    WhereOut,
    WhoAmI,
)

Labels = Mapping[str, str] | Sequence[str]
Metrics = Mapping[str, float] | Sequence[Mapping[str, Any]]


class Client:
    """A lorareg server, reached over HTTP. Safe to reuse; not safe to share across threads."""

    def __init__(
        self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 4,
        transport: httpx.BaseTransport | None = None, fingerprint_cache_path: Path | None = None,
        safetensors_limits: HeaderLimits = ADAPTER_LIMITS,
    ) -> None:
        self._http = Http(url, token, timeout=timeout, retries=retries, transport=transport)
        self.fingerprint_cache_path = fingerprint_cache_path
        # Set it to the server's LORAREG_MAX_SAFETENSORS_* if they differ from the defaults.
        self.safetensors_limits = safetensors_limits

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def retry(self) -> RetryPolicy:
        return self._http.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._http.retry = policy

    @property
    def sleep(self) -> Callable[[float], None]:
        """What the client waits with between retries and polls (``time.sleep``)."""
        return self._http.sleep

    @sleep.setter
    def sleep(self, sleep: Callable[[float], None]) -> None:
        self._http.sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        self._http.close()

    # -- service, tokens, audit ----------------------------------------------------------

    def health(self) -> Health:
        """Liveness of the server (``GET /healthz``)."""
        return _admin.health(self._http)

    def server_version(self) -> ServerVersion:
        """The server's version."""
        return _admin.server_version(self._http)

    def whoami(self) -> WhoAmI:
        """Who the token acts as: actor, role, namespace, whether auth is on."""
        return _admin.whoami(self._http)

    def audit(self, namespace: str | None = None, target: str | None = None,
              action: str | None = None, limit: int | None = None) -> Iterator[AuditOut]:
        """Audit events, newest first, following cursors."""
        return _admin.audit(self._http, namespace, target, action, limit)

    def create_token(self, name: str, role: str, namespace: str | None = None,
                     expires_in_days: int | None = None) -> TokenOut:
        """Create an API token; the result holds the plaintext ``token``, shown only once."""
        return _admin.create_token(self._http, name, role, namespace, expires_in_days)

    def tokens(self) -> list[TokenOut]:
        """Tokens (without secrets)."""
        return _admin.tokens(self._http)

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token by id; revoking twice is harmless."""
        _admin.revoke_token(self._http, token_id)

    # -- namespaces and adapters ---------------------------------------------------------

    def namespaces(self) -> list[NamespaceOut]:
        """All namespaces visible to the token."""
        return _adapters.namespaces(self._http)

    def create_namespace(self, name: str, description: str = "") -> NamespaceOut:
        """Create a namespace (admin)."""
        return _adapters.create_namespace(self._http, name, description)

    def adapters(self, namespace: str | None = None, label: Labels | None = None,
                 q: str | None = None, sort: str | None = None, limit: int | None = None,
                 base: str | None = None) -> Iterator[AdapterOut]:
        """Adapters, following cursors; ``label`` is ``{"k": "v"}`` or ``["k=v"]``, ``q``
        searches names and descriptions, ``base`` is ``hub_id`` or ``hub_id@revision``."""
        return _adapters.adapters(self._http, namespace, label, q, base, sort, limit)

    def adapter(self, name: str) -> AdapterOut:
        """One adapter, ``ns/name``."""
        return _adapters.adapter(self._http, name)

    def update_adapter(self, name: str, description: str | None = None,
                       labels: Mapping[str, str] | None = None,
                       remove_labels: Sequence[str] | None = None) -> AdapterOut:
        """Change an adapter's description and labels (set ``labels``, drop ``remove_labels``)."""
        return _adapters.update_adapter(self._http, name, description, labels, remove_labels)

    # -- versions ------------------------------------------------------------------------

    def versions(
        self, adapter: str | None = None, *, namespace: str | None = None,
        status: str | None = None, labels: Labels | None = None, base: str | None = None,
        metric_filters: Sequence[str] = (), sort: str | None = None, order: str | None = None,
        limit: int | None = None,
    ) -> Iterator[VersionOut]:
        """Versions of one adapter, or across adapters (optionally of one namespace).

        ``metric_filters`` look like ``"accuracy>=0.9"``; ``sort`` is ``version``,
        ``created_at`` or ``metric.KEY``; ``order`` is ``asc`` or ``desc``.
        """
        flt = _versions.VersionFilter(namespace, status, labels, base, metric_filters, sort,
                                      order)
        return _versions.versions(self._http, adapter, flt, limit)

    def version(self, ref: str) -> VersionOut:
        """One version: ``ns/name@3``, ``ns/name@latest``, ``ns/name`` (= latest) or
        ``ns/name:prod`` (the channel's stable version)."""
        return _versions.version(self._http, ref)

    def yank(self, ref: str, reason: str) -> VersionOut:
        """Mark an explicit version (``ns/name@3``) as yanked; it stays pullable by number."""
        return _versions.yank(self._http, ref, reason)

    def unyank(self, ref: str, reason: str = "") -> VersionOut:
        """Undo a yank of an explicit version."""
        return _versions.yank(self._http, ref, reason, undo=True)

    def log_metrics(self, ref: str, metrics: Metrics, dataset: str | None = None,
                    split: str | None = None) -> MetricsOut:
        """Record metric values on a version; ``dataset``/``split`` fill rows that lack them."""
        return _versions.log_metrics(self._http, ref, metrics, dataset, split)

    def metric_history(self, ref: str) -> list[MetricOut]:
        """Every recorded metric value of a version, oldest first."""
        return _versions.metric_history(self._http, ref)

    def check(self, ref: str, profile: str = "vllm") -> CheckOut:
        """Could serving profile ``profile`` load version ``ref`` (``ns/name@N``, ``@latest``
        or a channel's stable ``ns/name:chan``)? Nothing changes."""
        return _versions.check(self._http, ref, profile)

    # -- push and pull -------------------------------------------------------------------

    def push(
        self, path: str | Path, adapter: str, base: str, metrics: Metrics | None = None,
        labels: Mapping[str, str] | None = None, provenance: Mapping[str, str] | None = None,
        description: str | None = None, progress: Progress | None = None,
        idempotency_key: str | None = None,
    ) -> PushResult:
        """Push an adapter folder as a new version of ``adapter`` trained on ``base``.

        Only blobs the server lacks are uploaded. Pushing identical content again uploads
        nothing and returns the existing version; ``idempotency_key`` names one pipeline step
        (its retries return the version it created; reused with other content: Conflict).
        The result is the version plus ``created``, ``uploaded_bytes`` and
        ``uploaded_digests``. ``progress`` is a callable receiving byte increments (negative
        when a retried upload starts over) or a tqdm-like bar (reset to the bytes to send).
        """
        spec = _versions.PushSpec(metrics, labels, provenance, description, idempotency_key)
        return _versions.push(self._http, Path(path), adapter, base, spec,
                              self.safetensors_limits, progress)

    @overload
    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None,
             overwrite: bool = False, merged: Literal[False] = False) -> PulledVersion: ...

    @overload
    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None,
             overwrite: bool = False, merged: Literal[True]) -> PulledArtifact: ...

    @overload
    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None,
             overwrite: bool = False, merged: bool) -> PulledVersion | PulledArtifact: ...

    def pull(self, ref: str, dest: str | Path, *, progress: Progress | None = None,
             overwrite: bool = False, merged: bool = False) -> PulledVersion | PulledArtifact:
        """Download a version (or, with ``merged``, its merged model) into the folder ``dest``,
        atomically and verified.

        Files land in ``.<dest>.partial-<manifest digest[:12]>`` next to ``dest`` (``merged-``
        before the digest for a merged model); an interrupted pull resumes there (whole
        verified files are kept, a partial file continues with a Range request). Every file's
        sha256 is checked; a mismatch deletes the file and raises DigestMismatch. The folder is
        renamed to ``dest`` at the end; an existing ``dest`` is replaced only with
        ``overwrite``. The result is the version (or the merged artifact, see :meth:`merged`)
        plus ``path`` and ``downloaded_bytes``.
        """
        folder = Path(dest).resolve()
        if merged:
            return _versions.pull_merged(self._http, ref, folder, progress, overwrite)
        return _versions.pull(self._http, ref, folder, progress, overwrite)

    def missing_blobs(self, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` the server does not hold."""
        return _blobs.missing_blobs(self._http, digests)

    def upload_blob(self, file: LocalFile, progress: Progress | None = None) -> BlobOut:
        """Stream one file to ``PUT /blobs/<digest>``; the server verifies the hash."""
        return _blobs.upload_blob(self._http, file, progress)

    # -- base models ---------------------------------------------------------------------

    def register_base(
        self, path: str | Path, hub_id: str, revision: str, *, upload: bool = False,
        no_cache: bool = False, progress: Progress | None = None,
        known_digests: Mapping[str, str] | None = None,
    ) -> RegisteredBase:
        """Fingerprint the base weights in the folder ``path`` and register them as
        ``hub_id@revision``; registering the same weights again returns the same base.

        With ``upload``, every file of the folder (weights, config, tokenizer) is also stored
        as a blob (only those the server lacks are sent), so workers can merge without a
        local copy. ``known_digests`` (``{relative path: sha256}``) skips re-hashing files
        already verified. The result is the base plus ``created`` and ``uploaded_bytes``.
        Fingerprinting is local, cached per file (``fingerprint_cache_path``) unless
        ``no_cache``.
        """
        return _bases.register_base(
            self._http, Path(path), hub_id, revision, upload=upload, no_cache=no_cache,
            cache_path=self.fingerprint_cache_path, progress=progress,
            known_digests=known_digests)

    def register_hf_cache(self, spec: str, *, upload: bool = False, no_cache: bool = False,
                          progress: Progress | None = None) -> RegisteredSnapshot:
        """Register the Hugging Face cache snapshot ``org/name@rev`` (offline) under the commit
        hash the revision resolves to. Every cached LFS blob is re-hashed first; a damaged one
        raises DigestMismatch naming the file. The result is as for :meth:`register_base`,
        plus ``snapshot`` (the folder)."""
        return _bases.register_hf_cache(self._http, spec, upload=upload, no_cache=no_cache,
                                        cache_path=self.fingerprint_cache_path,
                                        progress=progress)

    def bases(self, hub_id: str | None = None, revision: str | None = None,
              limit: int | None = None) -> list[BaseOut]:
        """Registered base models, optionally of one hub id (and revision)."""
        return _bases.bases(self._http, hub_id, revision, limit)

    def base(self, base_id: int | str) -> BaseOut:
        """One base model by id."""
        return _bases.base(self._http, base_id)

    def base_manifest(self, base_id: int | str) -> ManifestOut:
        """A base's fingerprint and ``[name, dtype, shape, sha256]`` per tensor."""
        return _bases.base_manifest(self._http, base_id)

    def ensure_compatible(self, ref: str, base_path: str | Path, *, no_cache: bool = False,
                          progress: Progress | None = None) -> Compatibility:
        """Check that the base weights in ``base_path`` are exactly those version ``ref`` was
        verified against (same fingerprint). Nothing is written anywhere.

        Raises IncompatibleBase when the fingerprints differ (naming both, the revisions or
        commits known, and the first differing tensor from the registered manifest), and when
        the version has no recorded fingerprint (its base is not registered, or it does not
        fit it).
        """
        return _bases.ensure_compatible(self._http, ref, Path(base_path), no_cache=no_cache,
                                        cache_path=self.fingerprint_cache_path,
                                        progress=progress)

    # -- merges and jobs -----------------------------------------------------------------

    def merge(self, ref: str, base_id: int | None = None) -> MergeOut:
        """Ask for version ``ref`` merged into its base (or the registered base ``base_id``
        with the same fingerprint): the existing artifact, or the job queued or joined."""
        return _jobs.merge(self._http, ref, base_id)

    def merged(self, ref: str) -> ArtifactOut:
        """The newest merged artifact of a version; NotFound if none."""
        return _jobs.merged(self._http, ref)

    def jobs(self, status: str | None = None, kind: str | None = None,
             target: str | None = None, limit: int | None = None) -> Iterator[JobOut]:
        """Jobs visible to the token, following cursors."""
        return _jobs.jobs(self._http, status, kind, target, limit)

    def job(self, job_id: int | str) -> JobOut:
        """One job: status, progress, attempts, result or error."""
        return _jobs.job(self._http, job_id)

    def cancel_job(self, job_id: int | str) -> JobOut:
        """Cancel a queued job now, or ask its worker to stop a running one between tensors;
        Conflict if the job already finished."""
        return _jobs.cancel_job(self._http, job_id)

    def wait_job(self, job_id: int | str, timeout: float | None = None,
                 progress: Callable[[JobOut], object] | None = None) -> JobOut:
        """Poll a job (every 0.2 s, backing off to 2 s) until it is succeeded, failed or
        cancelled, or ``timeout`` seconds have passed; return the last job seen (check its
        ``status``, or pass it to :func:`registry.client.job_error`). ``progress`` hears every
        poll."""
        return _jobs.wait_job(self._http, job_id, timeout, progress)

    # -- channels ------------------------------------------------------------------------

    def channel(self, ref: str) -> ChannelOut:
        """One channel, ``ns/name:chan``: stable, canary and weight, rollout, profile,
        protection, base fingerprint, revision."""
        return _channels.channel(self._http, ref)

    def channels(self, adapter: str) -> list[ChannelOut]:
        """Every channel of an adapter ``ns/name``."""
        return _channels.channels(self._http, adapter)

    def configure_channel(self, ref: str, profile: str | None = None,
                          protected: bool | None = None, expect_revision: int | None = None
                          ) -> ChannelOut:
        """Create a channel or set its serving profile (``any``, ``vllm``, ``merged``) and
        protection (admins only). Setting values is idempotent, so no revision is read first;
        pass ``expect_revision`` to make the change conditional."""
        return _channels.configure_channel(self._http, ref, profile, protected, expect_revision)

    def promote(
        self, ref: str, channel: str, *, now: bool = False,
        steps: Sequence[int] = (5, 25, 50, 100), interval_seconds: int = 600,
        gates: Sequence[str] = (), max_failures: int = 0, deadline_seconds: int | None = None,
        min_requests: int = 1, new_base: bool = False, reason: str = "",
        expect_revision: int | None = None,
    ) -> PromoteOut:
        """Put version ``ref`` (``ns/name@8``) on ``channel``: at once (``now``) or as a canary
        rollout through ``steps`` (percent) every ``interval_seconds`` behind ``gates``.

        The result is the channel (with its new revision) and the rollout, if one started.
        Conflict (409) when the channel changed since ``expect_revision`` (read here when
        None, see :mod:`registry.client._channels`), when a rollout is already active, or the
        version is yanked.
        """
        canary = _channels.Canary(now, list(steps), interval_seconds, list(gates), max_failures,
                                  deadline_seconds, min_requests, new_base)
        return _channels.promote(self._http, ref, channel, canary, reason, expect_revision)

    def rollback(self, ref: str, to: int | None = None, reason: str = "",
                 expect_revision: int | None = None) -> ChannelOut:
        """Make the previous stable version (or version ``to``) of channel ``ref`` stable
        again, aborting a running canary, in one change. Same read-then-CAS as promote."""
        return _channels.rollback(self._http, ref, to, reason, expect_revision)

    def history(self, ref: str, limit: int | None = None) -> Iterator[ChannelEventOut]:
        """Every change of channel ``ref``, newest first, following cursors."""
        return _channels.history(self._http, ref, limit)

    def pin_channel(self, ref: str) -> str:
        """A channel reference ``ns/name:chan`` as the explicit ``ns/name@N`` of the
        channel's stable version (NotFound if it has none); other references unchanged."""
        return _channels.pin_channel(self._http, ref)

    # -- rollouts and live metrics -------------------------------------------------------

    def rollout(self, rollout_id: int) -> RolloutOut:
        """One rollout: channel, version, status, steps, weight, gates, failures, ..."""
        return _channels.rollout(self._http, rollout_id)

    def rollout_evaluations(self, rollout_id: int) -> list[GateEvaluationOut]:
        """Every gate evaluation of a rollout, oldest first."""
        return _channels.rollout_evaluations(self._http, rollout_id)

    def pause_rollout(self, rollout_id: int, reason: str = "") -> RolloutOut:
        """Hold a rollout's canary at its current weight until resumed."""
        return _channels.control(self._http, rollout_id, "pause", reason)

    def resume_rollout(self, rollout_id: int, reason: str = "") -> RolloutOut:
        """Resume a paused rollout; its current step bakes one more interval."""
        return _channels.control(self._http, rollout_id, "resume", reason)

    def abort_rollout(self, rollout_id: int, reason: str = "") -> RolloutOut:
        """Abort a rollout: the canary weight drops to 0, the stable version keeps serving."""
        return _channels.control(self._http, rollout_id, "abort", reason)

    def wait_rollout(self, rollout_id: int, timeout: float | None = None,
                     progress: Callable[[RolloutOut], object] | None = None) -> RolloutOut:
        """Poll a rollout (every 0.2 s, backing off to 2 s) until it is promoted or aborted,
        or ``timeout`` seconds have passed; return the last rollout seen (check its
        ``status``). ``progress`` hears every poll."""
        return _channels.wait_rollout(self._http, rollout_id, timeout, progress)

    def report_live(self, reports: Sequence[Mapping[str, Any]]) -> int:
        """Report live serving measurements, batched: each ``{adapter: "ns/name", version: 8,
        requests: N, errors: M, values: {"latency_p95_ms": 123.0}}``. All or nothing; returns
        how many were accepted. Not retried after it may have reached the server (a report
        counted twice would skew the gates)."""
        return _channels.report_live(self._http, reports)

    # -- resolve -------------------------------------------------------------------------

    def resolve(self, ref: str, key: str = "") -> Resolved:
        """The version that serves request ``key`` on channel ``ref`` (sticky per key), the
        name to send the engine, its files and ``etag`` (changes whenever the channel does)."""
        return _channels.resolve(self._http, ref, key)

    def resolve_batch(self, channel: str, items: Sequence[str | Mapping[str, str]]
                      ) -> list[ResolveOut]:
        """Resolve many adapters (or keys) on one channel in one call; ``items`` are adapter
        names ``ns/name`` or ``{"adapter": "ns/name", "key": "user-1"}``. Answers in order."""
        return _channels.resolve_batch(self._http, channel, items)

    def resolve_namespace(self, namespace: str, channel: str = "prod") -> list[ChannelOut]:
        """Every adapter's channel ``channel`` in a namespace (stable, canary, weight,
        revision), so a serving host can preload them."""
        return _channels.resolve_namespace(self._http, namespace, channel)

    # -- operations ----------------------------------------------------------------------

    def add_webhook(self, namespace: str, url: str, events: list[str], *,
                    secret: str | None = None, allow_private: bool = False) -> WebhookOut:
        """Subscribe ``url`` to ``events`` of ``namespace``; the answer holds the secret."""
        return _ops.add_webhook(self._http, namespace, url, events, secret, allow_private)

    def webhooks(self, namespace: str) -> list[WebhookOut]:
        """The namespace's webhook subscriptions."""
        return _ops.webhooks(self._http, namespace)

    def remove_webhook(self, webhook_id: int) -> None:
        """Deactivate a subscription (its deliveries stay inspectable)."""
        _ops.remove_webhook(self._http, webhook_id)

    def test_webhook(self, webhook_id: int) -> PingQueued:
        """Queue a signed ``ping`` event for the subscription."""
        return _ops.test_webhook(self._http, webhook_id)

    def deliveries(self, webhook_id: int) -> list[DeliveryOut]:
        """Recent deliveries of a subscription."""
        return _ops.deliveries(self._http, webhook_id)

    def redeliver(self, delivery_id: int) -> DeliveryOut:
        """Send a delivery again (also a dead one)."""
        return _ops.redeliver(self._http, delivery_id)

    def gc(self, *, grace_seconds: int = 86400, dry_run: bool = True) -> GcReportOut:
        """Collect unreferenced blobs older than the grace period (dry run by default)."""
        return _ops.gc(self._http, grace_seconds, dry_run)

    def set_retention(self, adapter: str, keep_last: int | None) -> AdapterOut:
        """Keep the newest ``keep_last`` versions of ``adapter`` (None: keep all)."""
        return _ops.set_retention(self._http, adapter, keep_last)

    def apply_retention(self, *, dry_run: bool = True) -> RetentionReportOut:
        """Yank versions beyond each adapter's retention (dry run by default)."""
        return _ops.apply_retention(self._http, dry_run)

    # -- serving pools -------------------------------------------------------------------

    def pools(self, namespace: str | None = None) -> list[PoolOut]:
        """Every pool the token may read (of ``namespace`` only, when given)."""
        return _pools.pools(self._http, namespace)

    def pool(self, name: str) -> PoolDetailOut:
        """One pool ``ns/name``: its settings, bound ``channels`` and ``pinned`` versions."""
        return _pools.pool(self._http, name)

    def create_pool(
        self, name: str, *, base: str, model_id: str, dtype: str, engine: str = "vllm",
        served_model_name: str | None = None, architecture: str | None = None,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK, max_loras: int = 1,
        max_cpu_loras: int | None = None, target_modules: Sequence[str] | None = None,
        max_adapter_memory: int | None = None, drain_seconds: int = 600,
    ) -> PoolDetailOut:
        """Create pool ``ns/name`` with its engines' settings (``vllm serve`` flags); needs
        admin in the namespace. Conflict (409) if it exists."""
        settings = _pools.PoolSettings(
            engine, base, model_id, served_model_name, architecture, max_lora_rank, max_loras,
            max_cpu_loras, dtype, list(target_modules) if target_modules is not None else None,
            max_adapter_memory, drain_seconds)
        return _pools.create_pool(self._http, name, settings)

    def update_pool(self, name: str, clear: Sequence[str] = (), **changes: Any
                    ) -> PoolDetailOut:
        """Change settings (e.g. ``max_lora_rank=32``); ``clear`` unsets optional ones
        (``target_modules``, ``architecture``, ``served_model_name``, ``max_adapter_memory``)."""
        return _pools.update_pool(self._http, name, clear, changes)

    def bind_pool(self, pool: str, channel: str) -> PoolDetailOut:
        """Make ``pool`` serve channel ``ns/name:chan``; the pool afterwards."""
        return _pools.bind_pool(self._http, pool, channel)

    def unbind_pool(self, pool: str, channel: str) -> PoolDetailOut:
        """Stop serving channel ``ns/name:chan`` from ``pool``; the pool afterwards."""
        return _pools.bind_pool(self._http, pool, channel, bind=False)

    def pin_pool(self, pool: str, ref: str) -> PoolDetailOut:
        """Keep version ``ref`` (``ns/name@N``, or a channel's stable ``ns/name:chan``) in the
        pool's desired set whatever its channels serve."""
        return _pools.pin_pool(self._http, pool, ref)

    def unpin_pool(self, pool: str, ref: str) -> PoolDetailOut:
        """Release a pinned version ``ns/name@N`` of ``pool``."""
        return _pools.pin_pool(self._http, pool, ref, pin=False)

    def desired(self, pool: str) -> DesiredOut:
        """The pool's desired set: each member's served name, sources, since when and verdict,
        the set's own problems, and the versions that left it."""
        return _pools.desired(self._http, pool)

    def check_pool(self, ref: str, pool: str) -> PoolCheckOut:
        """Could ``pool`` take version ``ref`` (``ns/name@N``, ``@latest`` or a channel's
        stable ``ns/name:chan``)? Its served name, verdict and problems; no change."""
        return _pools.check_pool(self._http, ref, pool)

    # -- the fleet: desired sets for agents, residency, where ----------------------------

    def poll_desired(self, pool: str, revision: str | None = None, wait: float = 30.0
                     ) -> DesiredOut | None:
        """What an agent polls: the desired set (members and draining versions with their
        files, the pool's base fingerprint and model id, its ``revision``), or None while it
        is still at ``revision`` -- the server holds that answer up to ``wait`` seconds (at
        most 60) and answers as soon as the set changes."""
        return _pools.poll_desired(self._http, pool, revision, wait)

    def report_residency(self, pool: str, replica_id: str, residency: Residency
                         ) -> HeartbeatOut:
        """A replica's heartbeat: its whole residency (idempotent; needs read in the pool's
        namespace). The answer reads it against the desired set: verdict, loaded, pending,
        drift, and the set's revision now. Error texts over the server's limit are cut."""
        return _pools.report_residency(self._http, pool, replica_id, residency)

    def forget_replica(self, pool: str, replica_id: str) -> None:
        """Remove a decommissioned replica from the pool's ledger (promoters)."""
        _pools.forget_replica(self._http, pool, replica_id)

    def pool_status(self, pool: str) -> PoolStatusOut:
        """Every replica of ``pool``: liveness, verdict with both fingerprints, loaded vs
        desired, drift (missing, extra, failed loads with the engine's error, bytes that
        differ, anything on an incompatible base)."""
        return _pools.pool_status(self._http, pool)

    def where(self, ref: str) -> WhereOut:
        """Which replicas of which pools hold version ``ref`` (``ns/name@N``, ``@latest`` or a
        channel's stable), in which state, with its bytes or not; which pools want it."""
        return _pools.where(self._http, ref)

    def served_name(self, ref: str) -> str:
        """The name routers send engines for version ``ref`` (registry.served_names)."""
        return _pools.version_served_name(self._http, ref)

    def wait_loaded(self, target: str, served_name: str, timeout: float | None = 300.0,
                    progress: Callable[[list[PoolStatusOut]], object] | None = None
                    ) -> list[PoolStatusOut]:
        """Wait until every live replica of pool ``target`` (``ns/pool``), or of every pool
        bound to channel ``target`` (``ns/name:chan``), reports ``served_name`` loaded with
        its bytes (each pool needs one live replica at least); the pools' statuses then.
        After ``timeout`` seconds a RegistryError (exit 6) names each replica that has not,
        and why (its load error, its state, an incompatible base, no report)."""
        return _pools.wait_loaded(self._http, target, served_name, timeout, progress)
