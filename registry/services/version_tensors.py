"""The safetensors header of each version (name, dtype, shape per tensor), kept in the database
(:class:`registry.models.VersionTensors`) so that serving checks need no blob read.

It is recorded at push, from the header the push already read. Versions pushed before this
table existed have none: :func:`ensure` reads their headers from the blob store (a few KiB each,
ranged reads) and records them, inside a transaction that writes anyway (binding a channel,
pinning a version); read-only callers use :func:`read_missing`, which records nothing.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.db import insert_ignore
from registry.errors import InvalidAdapter, ValidationFailed
from registry.lora_layout import TensorInfo
from registry.manifest import FileEntry
from registry.models import AdapterVersion, VersionTensors, utcnow
from registry.safetensors_io import FORMAT_LIMITS, Header
from registry.services.inspect import WEIGHTS_FILE, read_safetensors_header

Tensors = dict[str, TensorInfo]  # name -> (dtype, shape)
MAX_PACKED_BYTES = 64 * 1024 * 1024  # inflated size: far above any adapter header


def pack(tensors: Mapping[str, TensorInfo]) -> bytes:
    """zlib-compressed canonical JSON of ``[name, dtype, shape]`` rows, sorted by name."""
    rows = [[name, dtype, list(shape)] for name, (dtype, shape) in sorted(tensors.items())]
    text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return zlib.compress(text.encode("utf-8"), 9)


def unpack(data: bytes) -> Tensors:
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, MAX_PACKED_BYTES)
        rows = json.loads(raw.decode("utf-8"))
        return {str(n): (str(d), tuple(int(x) for x in s)) for n, d, s in rows}
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ValidationFailed(f"a stored tensor header cannot be read: {exc}") from exc


def of_header(header: Header) -> Tensors:
    return {name: (t.dtype, tuple(t.shape)) for name, t in header.tensors.items()}


def record(session: Session, version: AdapterVersion, header: Header) -> None:
    """Keep ``header`` (read at push) for ``version``; part of the push's transaction."""
    session.add(VersionTensors(version_id=version.id, tensors=pack(of_header(header))))


def stored(session: Session, version_ids: Iterable[int]) -> dict[int, Tensors]:
    """The recorded tensors of those versions that have them."""
    ids = sorted(set(version_ids))
    if not ids:
        return {}
    rows = session.execute(select(VersionTensors.version_id, VersionTensors.tensors)
                           .where(VersionTensors.version_id.in_(ids)))
    return {vid: unpack(data) for vid, data in rows}


def read(store: BlobStore, version: AdapterVersion) -> Tensors:
    """The version's tensors, read from its weights file in the blob store."""
    entry = next((f for f in version.files if f.path == WEIGHTS_FILE), None)
    if entry is None:
        raise InvalidAdapter(f"{version.adapter.full_name}@{version.number} has no "
                             f"{WEIGHTS_FILE}")
    # Accepted at push under the caps of that day: a cap lowered since must not make it unreadable.
    stored_file = FileEntry(entry.path, entry.digest, entry.size)
    return of_header(read_safetensors_header(store, stored_file, FORMAT_LIMITS))


def read_missing(session: Session, store: BlobStore | None,
                 versions: Sequence[AdapterVersion]) -> dict[int, Tensors]:
    """Every version's tensors: recorded ones, the others read from ``store`` (when given)
    without recording them (for read-only transactions)."""
    found = stored(session, (v.id for v in versions))
    if store is not None:
        for version in versions:
            if version.id not in found:
                found[version.id] = read(store, version)
    return found


def ensure(session: Session, store: BlobStore, versions: Sequence[AdapterVersion]
           ) -> dict[int, Tensors]:
    """Every version's tensors, recording those not recorded yet (a writing transaction)."""
    found = stored(session, (v.id for v in versions))
    for version in versions:
        if version.id not in found:
            found[version.id] = read(store, version)
            # Two requests may fill the same version at once: the same bytes, either wins.
            insert_ignore(session, VersionTensors, {
                "version_id": version.id, "tensors": pack(found[version.id]),
                "created_at": utcnow()})
    return found
