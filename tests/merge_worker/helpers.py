"""Registering tiny bases and pushing PEFT adapters straight through the services."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.fingerprint import fingerprint_dir
from registry.manifest import FileEntry
from registry.models import AdapterVersion, BaseModel
from registry.services import bases, versions
from registry.services import blobs as blob_service
from registry.services.bases import BaseRegistration
from registry.services.context import Actor
from registry.services.versions import PushRequest

ACTOR = Actor("test")


def store_folder(session: Session, store: BlobStore, folder: Path) -> list[FileEntry]:
    """Upload every file of a folder as verified blobs (blob first, row second)."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with path.open("rb") as fh:
            blob_service.record(session, store.put(fh, digest=digest, size=len(data)))
        entries.append(FileEntry(path.relative_to(folder).as_posix(), digest, len(data)))
    return entries


def register(session: Session, store: BlobStore, base_dir: Path, *, hub_id: str = "tiny/llama",
             revision: str = "r1", upload: bool = False) -> BaseModel:
    fp = fingerprint_dir(base_dir)
    files = store_folder(session, store, base_dir) if upload else []
    base, _ = bases.register_base(
        session, ACTOR, BaseRegistration(hub_id, revision, fp.digest, fp.tensors, files), store)
    return base


def push(session: Session, store: BlobStore, adapter_dir: Path, name: str = "acme/bot", *,
         hub_id: str = "tiny/llama", revision: str = "r1") -> AdapterVersion:
    entries = store_folder(session, store, adapter_dir)
    req = PushRequest(name, entries, hub_id, revision)
    return versions.push_version(session, store, ACTOR, req).version
