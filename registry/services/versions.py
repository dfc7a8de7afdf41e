"""Adapter versions: push (immutable, numbered without gaps), get, list, yank/unyank."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, Text, cast, exists, func, select
from sqlalchemy.orm import Session, aliased, contains_eager, defer, joinedload

from registry import stored_json
from registry.blobs import BlobStore
from registry.errors import BadRequest, Conflict, NotFound
from registry.manifest import FileEntry, check_portable, manifest_digest, normalize_files
from registry.models import (
    Adapter,
    AdapterVersion,
    Metric,
    Namespace,
    VersionFile,
    VersionLabel,
    utcnow,
)
from registry.refs import Ref, check_base, parse_adapter_name
from registry.safetensors_io import ADAPTER_LIMITS, HeaderLimits
from registry.services import adapters, audit, bases, version_tensors
from registry.services import blobs as blob_service
from registry.services.context import Actor
from registry.services.inspect import inspect_adapter
from registry.services.metrics import MetricInput, add_metrics, check_metric
from registry.services.pagination import (
    Page,
    paginate,
)
from registry.statuses import VersionStatus, parse

PROVENANCE_KEYS = {"git_commit", "git_repo", "ci_run_url", "ci_job", "pushed_by", "source"}
MAX_PROVENANCE_VALUE = 2048


@dataclass
class PushRequest:
    adapter: str
    files: list[FileEntry]
    base_hub_id: str
    base_revision: str
    metrics: list[MetricInput] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    idempotency_key: str | None = None
    # Whose stored blobs the files may be (registry.services.blobs): None, any stored blob;
    # a namespace, only those it holds (per-namespace dedup, a scoped pusher).
    blob_view: str | None = None
    # Caps on the adapter's safetensors header (Settings.safetensors_limits).
    header_limits: HeaderLimits = ADAPTER_LIMITS


@dataclass
class PushResult:
    version: AdapterVersion
    created: bool


def check_provenance(provenance: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in provenance.items():
        if key not in PROVENANCE_KEYS:
            raise BadRequest(
                f"unknown provenance field {key!r}; allowed: {', '.join(sorted(PROVENANCE_KEYS))}"
            )
        if not isinstance(value, str) or len(value) > MAX_PROVENANCE_VALUE:
            raise BadRequest(f"provenance {key!r} must be a string of at most 2048 characters")
        out[key] = value
    return out


def push_version(
    session: Session, store: BlobStore, actor: Actor, req: PushRequest
) -> PushResult:
    """Create the next version of ``req.adapter`` (or return the identical existing one).

    Validation happens before anything is written. The version number comes from the
    adapter's counter taken under its row lock, so concurrent pushes get 1..N.
    """
    parse_adapter_name(req.adapter)
    check_base(req.base_hub_id, req.base_revision)
    files = normalize_files(req.files)
    check_portable(f.path for f in files)
    labels = adapters.check_labels(req.labels)
    provenance = check_provenance(req.provenance)
    metric_rows = [check_metric(m) for m in req.metrics]
    blob_service.require_stored(session, files, req.blob_view)
    inspection = inspect_adapter(store, files, req.header_limits)
    digest = manifest_digest(files)
    base, compat = bases.check_adapter_fits(
        session, req.base_hub_id, req.base_revision, inspection.layout
    )

    adapter = adapters.ensure_adapter(session, actor, req.adapter, description=req.description)
    keyed = _by_idempotency_key(session, adapter.id, req, digest)
    if keyed is not None:
        return PushResult(keyed, created=False)
    existing = session.scalar(select(AdapterVersion).where(
        AdapterVersion.adapter_id == adapter.id,
        AdapterVersion.manifest_digest == digest,
        AdapterVersion.base_hub_id == req.base_hub_id,
        AdapterVersion.base_revision == req.base_revision,
    ))
    if existing is not None:
        return PushResult(existing, created=False)

    number = adapter.next_version
    adapter.next_version = number + 1
    adapter.updated_at = utcnow()
    version = AdapterVersion(
        adapter=adapter, number=number, manifest_digest=digest, peft_config=inspection.config,
        base_hub_id=req.base_hub_id, base_revision=req.base_revision, base_model=base,
        compat_status=compat, provenance=provenance, pushed_by=actor.name,
        total_size=sum(f.size for f in files),
        files=[VersionFile(path=f.path, digest=f.digest, size=f.size) for f in files],
        idempotency_key=req.idempotency_key,
        labels=[VersionLabel(key=k, value=v) for k, v in sorted(labels.items())],
    )
    session.add(version)
    session.flush()
    blob_service.hold(session, adapter.namespace_id, [f.digest for f in files])
    add_metrics(session, version, metric_rows, actor)
    version_tensors.record(session, version, inspection.header)  # serving checks need it
    audit.record(
        session, actor, "version.pushed", "version", f"{req.adapter}@{number}",
        namespace=adapter.namespace.name,
        payload={"manifest_digest": digest, "base": f"{req.base_hub_id}@{req.base_revision}",
                 "compat_status": compat, "provenance": provenance},
    )
    return PushResult(version, created=True)


def _by_idempotency_key(session: Session, adapter_id: int, req: PushRequest, digest: str
                        ) -> AdapterVersion | None:
    """The version an earlier push with the same key created; Conflict if that push had
    other content (a key names one push, whatever is retried under it)."""
    if req.idempotency_key is None:
        return None
    if not 1 <= len(req.idempotency_key) <= 128 or not req.idempotency_key.isprintable():
        raise BadRequest("an idempotency key is 1..128 printable characters")
    version = session.scalar(select(AdapterVersion).where(
        AdapterVersion.adapter_id == adapter_id,
        AdapterVersion.idempotency_key == req.idempotency_key))
    if version is None:
        return None
    same = (version.manifest_digest, version.base_hub_id, version.base_revision) == (
        digest, req.base_hub_id, req.base_revision)
    if not same:
        raise Conflict(f"idempotency key {req.idempotency_key!r} was used for "
                       f"{req.adapter}@{version.number} with other content")
    return version


# Reads of versions leave the stored config to :func:`stored_configs`: the database driver's own
# JSON parser fails on a row an older release stored unchecked (too deep, huge integers), and
# that would fail the whole listing it is part of.
_DEFER_CONFIG = defer(AdapterVersion.peft_config)


@dataclass(frozen=True)
class StoredConfig:
    """A version's stored ``adapter_config.json`` as it can be served: ``value``, or None and
    ``error`` saying why the stored document cannot be (a row no release should have kept)."""

    value: dict[str, Any] | None
    error: str | None = None


def stored_configs(session: Session, version_ids: Sequence[int]) -> dict[int, StoredConfig]:
    """The configs of ``version_ids``, each read as text and checked like a pushed one."""
    if not version_ids:
        return {}
    rows = session.execute(select(AdapterVersion.id, cast(AdapterVersion.peft_config, Text))
                           .where(AdapterVersion.id.in_(version_ids)))
    return {version_id: _stored_config(text) for version_id, text in rows}


def _stored_config(text: str | None) -> StoredConfig:
    try:
        value = stored_json.loads(text or "")
    except stored_json.UnsafeJSON as exc:
        return StoredConfig(None, f"the stored adapter_config.json {exc}")
    if not isinstance(value, dict):
        return StoredConfig(None, "the stored adapter_config.json is not a JSON object")
    return StoredConfig(value)


def get_version(session: Session, ref: Ref) -> AdapterVersion:
    """Resolve ``ns/name@N`` or ``ns/name@latest`` (latest active version)."""
    if ref.channel is not None:
        raise BadRequest(f"{ref} names a channel; resolve it through the channel service")
    namespace, name = parse_adapter_name(ref.adapter)
    # One statement for the version with its adapter, namespace, files and labels (the
    # adapter's labels load only if asked for): this is the API's most frequent read.
    stmt = (
        select(AdapterVersion)
        .join(AdapterVersion.adapter).join(Adapter.namespace)
        .where(Namespace.name == namespace, Adapter.name == name)
        .options(contains_eager(AdapterVersion.adapter).contains_eager(Adapter.namespace),
                 contains_eager(AdapterVersion.adapter).lazyload(Adapter.labels),
                 joinedload(AdapterVersion.files), joinedload(AdapterVersion.labels),
                 _DEFER_CONFIG)
    )
    if ref.version is not None:
        version = session.scalars(stmt.where(AdapterVersion.number == ref.version)).unique().first()
    else:
        version = session.scalars(
            stmt.where(AdapterVersion.status == VersionStatus.ACTIVE)
            .order_by(AdapterVersion.number.desc()).limit(1)
        ).unique().first()
    if version is None:
        adapters.get_adapter(session, ref.adapter)  # NotFound names a missing adapter
        raise NotFound(f"version {ref} not found")
    return version


METRIC_FILTER_RE = re.compile(r"^(?:metric\.)?([A-Za-z0-9_.\-/]+)\s*(>=|<=|==|!=|>|<)\s*(\S+)\Z")


@dataclass(frozen=True)
class MetricFilter:
    key: str
    op: str
    value: float


def parse_metric_filter(text: str) -> MetricFilter:
    """``metric.accuracy>=0.9`` (the ``metric.`` prefix is optional)."""
    m = METRIC_FILTER_RE.match(text.strip())
    if not m:
        raise BadRequest(f"metric filter {text!r} must look like metric.KEY>=NUMBER")
    try:
        value = float(m.group(3))
    except ValueError as exc:
        raise BadRequest(f"metric filter {text!r}: {m.group(3)!r} is not a number") from exc
    return MetricFilter(m.group(1), m.group(2), value)


def latest_metric_value(key: str) -> Any:
    """Correlated subquery: the latest value of metric ``key`` for the outer version row."""
    m = aliased(Metric)
    return (
        select(m.value)
        .where(m.version_id == AdapterVersion.id, m.key == key)
        .order_by(m.id.desc())
        .limit(1)
        .scalar_subquery()
    )


_OPS = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


@dataclass
class VersionQuery:
    adapter: str | None = None
    namespace: str | None = None
    scope: Sequence[str] | None = None
    status: VersionStatus | str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    base: str | None = None
    metrics: list[MetricFilter] = field(default_factory=list)
    sort: str = "version"
    descending: bool = True


def _filtered(session: Session, q: VersionQuery) -> Select[Any]:
    stmt = select(AdapterVersion).join(Adapter, AdapterVersion.adapter_id == Adapter.id).join(
        Namespace, Adapter.namespace_id == Namespace.id
    ).options(_DEFER_CONFIG)
    if q.adapter:
        stmt = stmt.where(AdapterVersion.adapter_id == adapters.get_adapter(session, q.adapter).id)
    if q.namespace:
        stmt = stmt.where(Namespace.name == q.namespace)
    if q.scope is not None:
        stmt = stmt.where(Namespace.name.in_(q.scope))
    if q.status:
        stmt = stmt.where(AdapterVersion.status == parse(VersionStatus, q.status))
    for key, value in q.labels.items():
        stmt = stmt.where(exists().where(
            VersionLabel.version_id == AdapterVersion.id, VersionLabel.key == key,
            VersionLabel.value == value,
        ))
    if q.base:
        hub_id, _, revision = q.base.partition("@")
        stmt = stmt.where(AdapterVersion.base_hub_id == hub_id)
        if revision:
            stmt = stmt.where(AdapterVersion.base_revision == revision)
    for mf in q.metrics:
        stmt = stmt.where(_OPS[mf.op](latest_metric_value(mf.key), mf.value))
    return stmt


def list_versions(
    session: Session, q: VersionQuery, *, cursor: str | None = None, limit: int = 50
) -> Page[AdapterVersion]:
    """List versions with filters; sort by ``version``, ``created_at`` or ``metric.KEY``."""
    stmt = _filtered(session, q)
    if q.sort == "version":
        sort_col: Any = AdapterVersion.id if not q.adapter else AdapterVersion.number
        reader = (lambda v: v.id) if not q.adapter else (lambda v: v.number)
    elif q.sort == "created_at":
        sort_col, reader = AdapterVersion.created_at, (lambda v: v.created_at)
    elif q.sort.startswith("metric."):
        key = q.sort.removeprefix("metric.")
        # Versions without the metric sort last in either direction.
        sort_col = func.coalesce(latest_metric_value(key), -1e308 if q.descending else 1e308)
        stmt = stmt.add_columns(sort_col.label("_sort"))
        return paginate(session, stmt, sort_col, AdapterVersion.id, descending=q.descending,
                        cursor=cursor, limit=limit, computed=True)
    else:
        raise BadRequest(f"unknown sort {q.sort!r}: use version, created_at or metric.KEY")
    return paginate(session, stmt, sort_col, AdapterVersion.id, descending=q.descending,
                    cursor=cursor, limit=limit, sort_value=reader)


def yank(session: Session, actor: Actor, ref: Ref, reason: str) -> AdapterVersion:
    """Mark a version yanked: it stays pullable by number but never resolves as latest."""
    if not reason.strip():
        raise BadRequest("yanking needs a reason")
    version = _locked(session, ref)
    if version.status == VersionStatus.YANKED:
        raise Conflict(f"{ref} is already yanked ({version.yank_reason})")
    version.status, version.yank_reason, version.yanked_at = VersionStatus.YANKED, reason, utcnow()
    _audit(session, actor, version, "version.yanked", {"reason": reason})
    return version


def unyank(session: Session, actor: Actor, ref: Ref, reason: str = "") -> AdapterVersion:
    version = _locked(session, ref)
    if version.status != VersionStatus.YANKED:
        raise Conflict(f"{ref} is not yanked")
    version.status, version.yank_reason, version.yanked_at = VersionStatus.ACTIVE, None, None
    _audit(session, actor, version, "version.unyanked", {"reason": reason})
    return version


def _locked(session: Session, ref: Ref) -> AdapterVersion:
    if ref.version is None:
        raise BadRequest(f"{ref}: name an explicit version number")
    version = get_version(session, ref)
    stmt = (select(AdapterVersion).where(AdapterVersion.id == version.id).options(_DEFER_CONFIG)
            .with_for_update(of=AdapterVersion).execution_options(populate_existing=True))
    return session.scalars(stmt).one()


def _audit(
    session: Session, actor: Actor, version: AdapterVersion, action: str, payload: dict[str, Any]
) -> None:
    session.flush()
    audit.record(session, actor, action, "version", version_name(version),
                 namespace=version.adapter.namespace.name, payload=payload)


def version_name(version: AdapterVersion) -> str:
    return f"{version.adapter.full_name}@{version.number}"
