"""Where a worker finds base weights, always checked against the recorded fingerprint.

Sources, in order:

1. the blob store, when the base was registered with ``--upload``: downloaded once (every
   file verified by sha256 while streaming) into ``<worker cache>/bases/<fingerprint>``,
   renamed into place only when complete;
2. the Hugging Face cache snapshot of ``hub_id@revision`` (offline, ``HF_HOME`` respected);
3. every folder in ``LORAREG_BASE_DIRS`` and its immediate sub-folders holding safetensors.

A candidate is used only if its fingerprint (cached by path, size, mtime and inode) equals the
recorded one; otherwise the error names both fingerprints and the first differing tensor.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.blobs import BlobStore
from registry.config import Settings
from registry.errors import IncompatibleBase, InvalidSafetensors, NotFound
from registry.fingerprint import Fingerprint, TensorEntry, ensure_matches, fingerprint_dir
from registry.fingerprint_cache import FingerprintCache
from registry.manifest import FileEntry


@dataclass(frozen=True)
class BaseSpec:
    hub_id: str
    revision: str
    fingerprint: str
    tensors: Sequence[TensorEntry]
    files: Sequence[FileEntry]


def locate_base(settings: Settings, store: BlobStore, spec: BaseSpec) -> Path:
    """A local folder holding exactly the registered base weights (see module docstring)."""
    cache = FingerprintCache.default(settings.fingerprint_cache)
    if spec.files:
        folder = _download(settings, store, spec)
        _check(folder, spec, cache)
        return folder
    first_error: IncompatibleBase | None = None
    for candidate in _candidates(settings, spec):
        try:
            _check(candidate, spec, cache)
            return candidate
        except (IncompatibleBase, InvalidSafetensors) as exc:
            if first_error is None and isinstance(exc, IncompatibleBase):
                first_error = exc
    if first_error is not None:
        raise first_error
    raise NotFound(
        f"base weights for {spec.hub_id}@{spec.revision} are not available to this worker: "
        "register the base with --upload, or put it under LORAREG_BASE_DIRS or the HF cache"
    )


def _check(folder: Path, spec: BaseSpec, cache: FingerprintCache) -> Fingerprint:
    actual = fingerprint_dir(folder, cache=cache)
    ensure_matches(spec.fingerprint, spec.tensors, actual, expected_revision=spec.revision,
                   actual_label=str(folder))
    return actual


def _download(settings: Settings, store: BlobStore, spec: BaseSpec) -> Path:
    root = settings.effective_worker_cache / "bases"
    folder = root / spec.fingerprint
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{spec.fingerprint}.{uuid.uuid4().hex[:8]}.partial"
    try:
        for f in spec.files:
            target = tmp / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            store.download_to(f.digest, target)
        tmp.rename(folder)
    except OSError:
        if folder.is_dir():  # another worker finished the same download first
            return folder
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _candidates(settings: Settings, spec: BaseSpec) -> Iterator[Path]:
    snapshot = _hf_snapshot(spec.hub_id, spec.revision)
    if snapshot is not None:
        yield snapshot
    for root in settings.base_dirs:
        yield from _weight_folders(Path(root))


def _weight_folders(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    if any(root.glob("*.safetensors")):
        yield root
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if any(child.glob("*.safetensors")):
            yield child


def _hf_snapshot(hub_id: str, revision: str) -> Path | None:
    """The cached snapshot folder of ``hub_id@revision``, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
