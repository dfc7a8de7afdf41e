"""Client methods for base models: register (from a folder or the Hugging Face cache), list,
show, and check local base weights against a version's recorded base fingerprint.

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
from typing import Any
from urllib.parse import quote

from registry import errors
from registry.client import _hf_cache as hf_cache
from registry.client._core import Core, query
from registry.client._transfer import LocalFile, Progress, Reporter, iter_folder, sha256_file
from registry.fingerprint import (
    Fingerprint,
    FingerprintCache,
    TensorEntry,
    ensure_matches,
    fingerprint_dir,
)
from registry.refs import check_base


class BasesMixin:
    """Base-model methods of :class:`registry.client.Client`."""

    def register_base(
        self: Core, path: str | Path, hub_id: str, revision: str, *, upload: bool = False,
        no_cache: bool = False, progress: Progress | None = None,
        known_digests: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Fingerprint the base weights in the folder ``path`` and register them as
        ``hub_id@revision``; registering the same weights again returns the same base.

        With ``upload``, every file of the folder (weights, config, tokenizer) is also stored
        as a blob (only those the server lacks are sent), so workers can merge without a
        local copy. ``known_digests`` (``{relative path: sha256}``) skips re-hashing files
        already verified. The result is the base plus ``created`` and ``uploaded_bytes``.
        """
        check_base(hub_id, revision)
        folder = Path(path)
        report = Reporter(progress)
        fingerprint = _fingerprint(folder, self.fingerprint_cache_path, no_cache, report)
        files: list[LocalFile] = []
        uploaded: list[LocalFile] = []
        if upload:
            files = _local_files(folder, report, known_digests or {})
            uploaded = self._upload_missing(files, report)
        body = {
            "hub_id": hub_id, "revision": revision, "fingerprint": fingerprint.digest,
            "tensors": [[t.name, t.dtype, list(t.shape), t.sha256] for t in fingerprint.tensors],
            "files": [f.entry() for f in files],
        }
        # Idempotent: the same weights for the same hub id and revision return the same base.
        response = self._send("POST", "/api/v1/bases", json=body, idempotent=True)
        base: dict[str, Any] = response.json()
        return {**base, "created": response.status_code == 201,
                "uploaded_bytes": sum(f.size for f in uploaded)}

    def register_hf_cache(
        self: Core, spec: str, *, upload: bool = False, no_cache: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Register the Hugging Face cache snapshot ``org/name@rev`` (offline, see
        :mod:`registry.client._hf_cache`) under the commit hash the revision resolves to.

        Every cached LFS blob is re-hashed first; a damaged one raises DigestMismatch naming
        the file. The result is as for :meth:`register_base`, plus ``snapshot`` (the folder).
        """
        repo_id, revision = hf_cache.parse_spec(spec)
        check_base(repo_id, revision)
        snapshot = hf_cache.resolve(repo_id, revision)
        report = Reporter(progress)
        report.start(sum(b.stat().st_size for b in hf_cache.lfs_blobs(snapshot).values()),
                     "verify")
        digests = hf_cache.verify_blobs(snapshot, report)
        result = BasesMixin.register_base(
            self, snapshot.path, repo_id, snapshot.commit, upload=upload, no_cache=no_cache,
            progress=progress, known_digests=digests,
        )
        return {**result, "snapshot": str(snapshot.path)}

    def bases(
        self: Core, hub_id: str | None = None, revision: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Registered base models, optionally of one hub id (and revision)."""
        return list(self._paginate("/api/v1/bases", query(hub_id=hub_id, revision=revision),
                                   limit))

    def base(self: Core, base_id: int | str) -> dict[str, Any]:
        """One base model by id."""
        result: dict[str, Any] = self._get(f"/api/v1/bases/{quote(str(base_id), safe='')}")
        return result

    def base_manifest(self: Core, base_id: int | str) -> dict[str, Any]:
        """``{fingerprint, tensors: [[name, dtype, shape, sha256], ...]}`` of a base."""
        result: dict[str, Any] = self._get(
            f"/api/v1/bases/{quote(str(base_id), safe='')}/manifest")
        return result

    def ensure_compatible(
        self: Core, ref: str, base_path: str | Path, *, no_cache: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Check that the base weights in ``base_path`` are exactly those version ``ref`` was
        verified against (same fingerprint). Nothing is written anywhere.

        Raises IncompatibleBase when the fingerprints differ (naming both, the revisions or
        commits known, and the first differing tensor from the registered manifest), and when
        the version has no recorded fingerprint (its base is not registered, or it does not
        fit it). The result: ``{ref, compatible, fingerprint, base, path, tensors,
        total_bytes}``.
        """
        version = self.version(ref)
        base = version["base"]
        expected = base.get("fingerprint")
        if not expected:
            raise _unverified(version)
        folder = Path(base_path)
        actual = _fingerprint(folder, self.fingerprint_cache_path, no_cache, Reporter(progress))
        if actual.digest != expected:
            entries = _registered_tensors(self, base["hub_id"], base["revision"], expected)
            _raise_mismatch(version, folder, expected, entries, actual)
        return {"ref": version["ref"], "compatible": True, "fingerprint": actual.digest,
                "base": base, "path": str(folder), "tensors": len(actual.tensors),
                "total_bytes": actual.total_bytes}


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


def _registered_tensors(api: Core, hub_id: str, revision: str,
                        fingerprint: str) -> list[TensorEntry] | None:
    """The tensor manifest of the registered base with this fingerprint, if readable."""
    try:
        candidates = list(api._paginate("/api/v1/bases",
                                        query(hub_id=hub_id, revision=revision), None))
        match = next((b for b in candidates if b.get("fingerprint") == fingerprint), None)
        if match is None:
            return None
        manifest = api._get(f"/api/v1/bases/{int(match['id'])}/manifest")
        return [TensorEntry(n, d, tuple(s), h) for n, d, s, h in manifest["tensors"]]
    except (errors.NotFound, errors.PermissionDenied):
        return None


def _raise_mismatch(version: Mapping[str, Any], folder: Path, expected: str,
                    entries: list[TensorEntry] | None, actual: Fingerprint) -> None:
    base = version["base"]
    commit = hf_cache.snapshot_commit(folder)
    label = f"{folder} (commit {commit})" if commit else str(folder)
    try:
        ensure_matches(expected, entries, actual, expected_revision=base["revision"],
                       actual_label=label)
    except errors.IncompatibleBase as err:
        extra = {**err.extra, "ref": version["ref"], "path": str(folder)}
        if commit:
            extra["actual_revision"] = commit
        raise errors.IncompatibleBase(
            f"{version['ref']} was verified against {base['hub_id']}@{base['revision']}, "
            f"not the weights in {folder}: {err.detail}", **extra) from None


def _unverified(version: Mapping[str, Any]) -> errors.IncompatibleBase:
    base = version["base"]
    name = f"{base['hub_id']}@{base['revision']}"
    status = base.get("compat_status")
    if status == "incompatible":
        detail = (f"{version['ref']} does not fit its registered base {name} "
                  "(compat incompatible): no base weights can be compatible with it")
    else:
        detail = (f"{version['ref']} has no recorded base fingerprint to compare with: its base "
                  f"{name} is not registered (compat {status}); register it first with "
                  f"`lorareg base register DIR --name {base['hub_id']} "
                  f"--revision {base['revision']}`")
    return errors.IncompatibleBase(detail, ref=version["ref"], compat_status=status)
