"""Base weights in the local Hugging Face cache: found and checked offline, never downloaded.

The cache (``$HF_HOME/hub``, or ``$HF_HUB_CACHE``) holds one folder per repository::

    models--org--name/
      refs/main                    the commit hash the branch pointed to when downloaded
      snapshots/<commit>/<file>    symlinks into ../../blobs
      blobs/<sha256>               content of LFS files: the name IS the sha256 of the bytes
      blobs/<git sha1>             content of regular git files (config, tokenizer, ...)

:func:`resolve` finds the snapshot of ``repo@revision`` through ``huggingface_hub`` with
``local_files_only=True`` (so ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` mean what they
mean to every Hugging Face tool, and no request is ever sent), and :func:`verify_blobs` re-hashes
every LFS blob the snapshot links to: a cache damaged on disk is refused with the file named.
Regular git files are named by git's SHA-1 of a header plus the content and are not checked here
(the weights, which matter, are always LFS files).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registry.client._transfer import iter_folder, sha256_file
from registry.errors import BadRequest, DigestMismatch, NotFound

SHA256_NAME = re.compile(r"^[0-9a-f]{64}\Z")
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class Snapshot:
    """A cached snapshot: the repository, the revision asked for, its commit and folder."""

    repo_id: str
    revision: str
    commit: str
    path: Path


def parse_spec(spec: str) -> tuple[str, str]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; without ``@rev``, the ``main`` branch."""
    repo_id, sep, revision = spec.partition("@")
    if not repo_id or (sep and not revision):
        raise BadRequest(f"{spec!r} must look like ORG/NAME@REVISION (a branch, tag or commit)")
    return repo_id, revision or DEFAULT_REVISION


def resolve(repo_id: str, revision: str = DEFAULT_REVISION) -> Snapshot:
    """The cached snapshot of ``repo_id@revision``; NotFound when it is not in the cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as exc:  # also an incomplete snapshot
        raise NotFound(
            f"{repo_id}@{revision} is not (completely) in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}; download it first, e.g. "
            f"`hf download {repo_id} --revision {revision}` ({_first_line(exc)})",
            cache=str(constants.HF_HUB_CACHE),
        ) from None
    except ValueError as exc:  # huggingface_hub's HFValidationError: a malformed repo id
        raise BadRequest(f"{repo_id!r} is not a Hugging Face repository id: {exc}") from None
    return Snapshot(repo_id, revision, folder.name, folder)


def snapshot_commit(folder: Path) -> str | None:
    """The commit of ``folder`` if it is a snapshot folder of a Hugging Face cache."""
    parent = folder.absolute().parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        return folder.name
    return None


def lfs_blobs(snapshot: Snapshot) -> dict[str, Path]:
    """``{relative path: blob}`` for every snapshot file linked to an LFS blob."""
    found: dict[str, Path] = {}
    for rel, file in iter_folder(snapshot.path):
        blob = Path(os.path.realpath(file))
        if blob.parent.name == "blobs" and SHA256_NAME.match(blob.name):
            found[rel] = blob
    return found


def verify_blobs(
    snapshot: Snapshot, report: Callable[[int], object] | None = None
) -> dict[str, str]:
    """Hash every LFS blob of the snapshot; ``{relative path: sha256}`` when all match their
    names, else DigestMismatch naming the file (``report`` hears hashed bytes)."""
    verified: dict[str, str] = {}
    for rel, blob in lfs_blobs(snapshot).items():
        actual = sha256_file(blob, report)
        if actual != blob.name:
            raise DigestMismatch(
                f"{rel} in the Hugging Face cache snapshot of {snapshot.repo_id}@{snapshot.commit} "
                f"is corrupt: its blob {blob} hashes to {actual}, but its name says {blob.name}; "
                "delete the blob and download the snapshot again",
                path=rel, expected=blob.name, actual=actual,
            )
        verified[rel] = actual
    return verified


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
