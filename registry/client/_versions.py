"""Versions: list and read them, yank, metrics, serving-profile checks, and the two transfers
(push a folder as a version, pull a version or its merged model into a folder)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from registry import errors
from registry.client import _blobs
from registry.client._channels import pin_channel
from registry.client._http import Http, label_params, parse, query
from registry.client._jobs import merged
from registry.client._paths import adapter_path, version_path
from registry.client._results import PulledArtifact, PulledVersion, PushResult
from registry.client._transfer import (
    LocalFile,
    Progress,
    Reporter,
    check_dest,
    download_folder,
    scan_folder,
)
from registry.manifest import FileEntry, manifest_digest
from registry.refs import parse_adapter_name, parse_base_ref
from registry.safetensors_io import HeaderLimits, read_header
from registry.wire import CheckOut, FileOut, Items, MetricOut, MetricsOut, VersionOut

Metrics = Mapping[str, float] | Sequence[Mapping[str, Any]]
Labels = Mapping[str, str] | Sequence[str]

#: The weights file the server parses at push (registry.services.inspect.WEIGHTS_FILE).
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class VersionFilter:
    """What :func:`versions` lists (see ``Client.versions``)."""

    namespace: str | None = None
    status: str | None = None
    labels: Labels | None = None
    base: str | None = None
    metric_filters: Sequence[str] = ()
    sort: str | None = None
    order: str | None = None


def metric_rows(metrics: Metrics | None) -> list[dict[str, Any]]:
    """``{"accuracy": 0.9}`` or ``[{"key":..., "value":..., "dataset":...}]`` -> API rows."""
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        return [{"key": k, "value": float(v)} for k, v in metrics.items()]
    return [dict(m) for m in metrics]


def versions(http: Http, adapter: str | None, flt: VersionFilter, limit: int | None
             ) -> Iterator[VersionOut]:
    path = f"{adapter_path(adapter)}/versions" if adapter else "/api/v1/versions"
    params = query(
        namespace=flt.namespace, status=flt.status, label=label_params(flt.labels),
        base=flt.base, metric=list(flt.metric_filters), sort=flt.sort, order=flt.order,
    )
    return http.paginate(path, VersionOut, params, limit)


def version(http: Http, ref: str) -> VersionOut:
    return http.get(version_path(pin_channel(http, ref)), VersionOut)


def yank(http: Http, ref: str, reason: str, *, undo: bool = False) -> VersionOut:
    action = "unyank" if undo else "yank"
    return http.post(f"{version_path(ref, explicit=True)}/{action}", {"reason": reason},
                     VersionOut)


def log_metrics(http: Http, ref: str, metrics: Metrics, dataset: str | None,
                split: str | None) -> MetricsOut:
    rows = metric_rows(metrics)
    for row in rows:
        if dataset is not None:
            row.setdefault("dataset", dataset)
        if split is not None:
            row.setdefault("split", split)
    return http.post(f"{version_path(ref)}/metrics", {"metrics": rows}, MetricsOut)


def metric_history(http: Http, ref: str) -> list[MetricOut]:
    return http.get(f"{version_path(ref)}/metrics", Items[MetricOut]).items


def check(http: Http, ref: str, profile: str) -> CheckOut:
    pinned = pin_channel(http, ref)
    return http.get(f"{version_path(pinned)}/check", CheckOut, query(profile=profile))


# -------------------------------------------------------------------------------- push


@dataclass(frozen=True)
class PushSpec:
    """What a push records besides the files (see ``Client.push``)."""

    metrics: Metrics | None = None
    labels: Mapping[str, str] | None = None
    provenance: Mapping[str, str] | None = None
    description: str | None = None
    idempotency_key: str | None = None


def check_weights_header(folder: Path, limits: HeaderLimits) -> None:
    """Refuse, before hashing or uploading anything, a weights header the server would refuse
    (InvalidSafetensors, from the same parser and caps)."""
    weights = folder / ADAPTER_WEIGHTS
    if weights.is_file():  # a folder without it is refused by the server, with its message
        read_header(weights, limits)


def push(http: Http, folder: Path, adapter: str, base: str, spec: PushSpec,
         limits: HeaderLimits, progress: Progress | None) -> PushResult:
    hub_id, revision = parse_base_ref(base)
    parse_adapter_name(adapter)
    check_weights_header(folder, limits)
    files = scan_folder(folder)
    report = Reporter(progress)
    uploaded = _blobs.upload_missing(http, files, report)
    body = {
        "files": [f.entry() for f in files],
        "base": {"hub_id": hub_id, "revision": revision},
        "metrics": metric_rows(spec.metrics),
        "labels": dict(spec.labels or {}),
        "provenance": dict(spec.provenance or {}),
        "description": spec.description,
    }
    if spec.idempotency_key is not None:
        body["idempotency_key"] = spec.idempotency_key
    created = _create_version(http, adapter, body, files, report, uploaded)
    return PushResult(**created.model_dump(), uploaded_bytes=sum(f.size for f in uploaded),
                      uploaded_digests=[f.digest for f in uploaded])


def _create_version(http: Http, adapter: str, body: dict[str, Any], files: Sequence[LocalFile],
                    report: Reporter, uploaded: list[LocalFile]) -> VersionOut:
    path = f"{adapter_path(adapter)}/versions"
    try:
        response = http.send("POST", path, json=body, idempotent=True)
    except errors.BadRequest as err:
        # A blob vanished between "missing" and now (e.g. garbage collection): upload
        # what the server names, once, and try again.
        missing = err.extra.get("missing")
        if not missing or not isinstance(missing, list):
            raise
        uploaded.extend(_blobs.upload_missing(http, files, report, only=missing))
        response = http.send("POST", path, json=body, idempotent=True)
    created = parse(VersionOut, response.json(), response)
    if "created" not in created.model_fields_set:  # an older server: say it from the status
        created.created = response.status_code == 201
    return created


# -------------------------------------------------------------------------------- pull


def pull(http: Http, ref: str, dest: Path, progress: Progress | None, overwrite: bool
         ) -> PulledVersion:
    ref = pin_channel(http, ref)  # ns/name:prod -> ns/name@<stable>
    source = http.get(version_path(ref), VersionOut)
    check_dest(dest, overwrite)
    downloaded = _download(http, source.files, dest, source.manifest_digest[:12], progress,
                           overwrite)
    return PulledVersion(**source.model_dump(), path=str(dest), downloaded_bytes=downloaded)


def pull_merged(http: Http, ref: str, dest: Path, progress: Progress | None, overwrite: bool
                ) -> PulledArtifact:
    ref = pin_channel(http, ref)
    source = merged(http, ref)
    entries = [FileEntry(f.path, f.digest, f.size) for f in source.files]
    check_dest(dest, overwrite)
    downloaded = _download(http, source.files, dest, f"merged-{manifest_digest(entries)[:12]}",
                           progress, overwrite)
    return PulledArtifact(**source.model_dump(), path=str(dest), downloaded_bytes=downloaded)


def _download(http: Http, files: Sequence[FileOut], dest: Path, key: str,
              progress: Progress | None, overwrite: bool) -> int:
    return download_folder(files, dest, key, partial(_blobs.download, http), Reporter(progress),
                           overwrite=overwrite)
