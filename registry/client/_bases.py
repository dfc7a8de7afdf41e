"""Base models: register (from a folder or the Hugging Face cache), list, show, and check
local base weights against a version's recorded base fingerprint.

Fingerprinting (:mod:`registry.fingerprint`) is local work: the weights never leave the machine
unless ``upload`` is asked for. The per-file fingerprint cache (``FingerprintCache``, at the
client's ``fingerprint_cache_path`` or ``~/.cache/lorareg/fingerprints.sqlite``) makes a second
look at unchanged files nearly free; ``no_cache`` hashes everything again.

Progress: these methods accept the same ``progress`` as push/pull (a callable receiving byte
increments, or a tqdm-like bar); a bar is reset at each phase (``verify`` cached blobs,
``fingerprint``, ``hash`` files to upload, ``upload``) and renamed when it has
``set_description_str``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from registry import errors
from registry.client import _hf_cache as hf_cache
from registry.client._blobs import upload_missing
from registry.client._http import Http, parse, query
from registry.client._results import Compatibility, RegisteredBase, RegisteredSnapshot
from registry.client._transfer import LocalFile, Progress, Reporter, iter_folder, sha256_file
from registry.client._versions import version
from registry.fingerprint import (
    Fingerprint,
    FingerprintCache,
    TensorEntry,
    ensure_matches,
    fingerprint_dir,
)
from registry.refs import check_base
from registry.statuses import CompatStatus
from registry.wire import BaseOut, BaseRefOut, ManifestOut, VersionOut


def register_base(
    http: Http, path: Path, hub_id: str, revision: str, *, upload: bool, no_cache: bool,
    cache_path: Path | None, progress: Progress | None,
    known_digests: Mapping[str, str] | None = None,
) -> RegisteredBase:
    check_base(hub_id, revision)
    report = Reporter(progress)
    fingerprint = _fingerprint(path, cache_path, no_cache, report)
    files: list[LocalFile] = []
    uploaded: list[LocalFile] = []
    if upload:
        files = _local_files(path, report, known_digests or {})
        uploaded = upload_missing(http, files, report)
    body = {
        "hub_id": hub_id, "revision": revision, "fingerprint": fingerprint.digest,
        "tensors": [[t.name, t.dtype, list(t.shape), t.sha256] for t in fingerprint.tensors],
        "files": [f.entry() for f in files],
    }
    # Idempotent: the same weights for the same hub id and revision return the same base.
    response = http.send("POST", "/api/v1/bases", json=body, idempotent=True)
    base = parse(BaseOut, response.json(), response)
    return RegisteredBase(**base.model_dump(), created=response.status_code == 201,
                          uploaded_bytes=sum(f.size for f in uploaded))


def register_hf_cache(http: Http, spec: str, *, upload: bool, no_cache: bool,
                      cache_path: Path | None, progress: Progress | None) -> RegisteredSnapshot:
    repo_id, revision = hf_cache.parse_spec(spec)
    check_base(repo_id, revision)
    snapshot = hf_cache.resolve(repo_id, revision)
    report = Reporter(progress)
    report.start(sum(b.stat().st_size for b in hf_cache.lfs_blobs(snapshot).values()),
                 "verify")
    digests = hf_cache.verify_blobs(snapshot, report)
    result = register_base(http, snapshot.path, repo_id, snapshot.commit, upload=upload,
                           no_cache=no_cache, cache_path=cache_path, progress=progress,
                           known_digests=digests)
    return RegisteredSnapshot(**result.model_dump(), snapshot=str(snapshot.path))


def bases(http: Http, hub_id: str | None, revision: str | None, limit: int | None
          ) -> list[BaseOut]:
    params = query(hub_id=hub_id, revision=revision)
    return list(http.paginate("/api/v1/bases", BaseOut, params, limit))


def base(http: Http, base_id: int | str) -> BaseOut:
    return http.get(f"/api/v1/bases/{quote(str(base_id), safe='')}", BaseOut)


def base_manifest(http: Http, base_id: int | str) -> ManifestOut:
    return http.get(f"/api/v1/bases/{quote(str(base_id), safe='')}/manifest", ManifestOut)


def ensure_compatible(http: Http, ref: str, base_path: Path, *, no_cache: bool,
                      cache_path: Path | None, progress: Progress | None) -> Compatibility:
    found = version(http, ref)
    expected = found.base.fingerprint
    if not expected:
        raise _unverified(found)
    actual = _fingerprint(base_path, cache_path, no_cache, Reporter(progress))
    if actual.digest != expected:
        entries = _registered_tensors(http, found.base, expected)
        _raise_mismatch(found, base_path, expected, entries, actual)
    return Compatibility(ref=found.ref, compatible=True, fingerprint=actual.digest,
                         base=found.base, path=str(base_path), tensors=len(actual.tensors),
                         total_bytes=actual.total_bytes)


# ------------------------------------------------------------------------------ helpers


def _fingerprint(folder: Path, cache_path: Path | None, no_cache: bool,
                 report: Reporter) -> Fingerprint:
    if not folder.is_dir():
        raise errors.BadRequest(f"{folder} is not a folder")
    cache = None if no_cache else FingerprintCache.default(cache_path)
    seen = {"total": -1, "done": 0}

    def on_progress(done: int, total: int) -> None:
        if total != seen["total"]:
            report.start(total, "fingerprint")
            seen["total"], seen["done"] = total, 0
        report(done - seen["done"])
        seen["done"] = done

    return fingerprint_dir(folder, cache=cache, progress=on_progress)


def _local_files(folder: Path, report: Reporter, known: Mapping[str, str]) -> list[LocalFile]:
    """Every file of the folder with its sha256 (``known`` ones are not hashed again)."""
    found = list(iter_folder(folder))
    report.start(sum(f.stat().st_size for rel, f in found if rel not in known), "hash")
    return [LocalFile(rel, f, known.get(rel) or sha256_file(f, report), f.stat().st_size)
            for rel, f in found]


def _registered_tensors(http: Http, ref: BaseRefOut, fingerprint: str
                        ) -> list[TensorEntry] | None:
    """The tensor manifest of the registered base with this fingerprint, if readable."""
    try:
        candidates = bases(http, ref.hub_id, ref.revision, None)
        match = next((b for b in candidates if b.fingerprint == fingerprint), None)
        if match is None:
            return None
        manifest = base_manifest(http, match.id)
        return [TensorEntry(n, d, tuple(s), h) for n, d, s, h in manifest.tensors]
    except (errors.NotFound, errors.PermissionDenied):
        return None


def _raise_mismatch(version: VersionOut, folder: Path, expected: str,
                    entries: list[TensorEntry] | None, actual: Fingerprint) -> None:
    base = version.base
    commit = hf_cache.snapshot_commit(folder)
    label = f"{folder} (commit {commit})" if commit else str(folder)
    try:
        ensure_matches(expected, entries, actual, expected_revision=base.revision,
                       actual_label=label)
    except errors.IncompatibleBase as err:
        extra = {**err.extra, "ref": version.ref, "path": str(folder)}
        if commit:
            extra["actual_revision"] = commit
        raise errors.IncompatibleBase(
            f"{version.ref} was verified against {base.hub_id}@{base.revision}, "
            f"not the weights in {folder}: {err.detail}", **extra) from None


def _unverified(version: VersionOut) -> errors.IncompatibleBase:
    base = version.base
    name = f"{base.hub_id}@{base.revision}"
    status = base.compat_status
    if status == CompatStatus.INCOMPATIBLE:
        detail = (f"{version.ref} does not fit its registered base {name} "
                  "(compat incompatible): no base weights can be compatible with it")
    else:
        detail = (f"{version.ref} has no recorded base fingerprint to compare with: its base "
                  f"{name} is not registered (compat {status}); register it first with "
                  f"`lorareg base register DIR --name {base.hub_id} "
                  f"--revision {base.revision}`")
    return errors.IncompatibleBase(detail, ref=version.ref, compat_status=status.value)
