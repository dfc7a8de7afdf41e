"""``lorareg export NAMESPACE --channel CH``: a channel's stable versions of a whole namespace,
one stable name per adapter, for loaders that want that (for vLLM prefer ``--pool``,
:mod:`registry.serving.export`: its names carry content, so a reload never serves stale cache
blocks, and its configs name the engine's model as vLLM's resolver requires).

Layout (``DIR`` is the folder given with ``--dir``)::

    DIR/<name>                  -> .lorareg/<name>@<version>-<manifest digest[:12]>  (symlink)
    DIR/<name>/adapter_config.json, adapter_model.safetensors, ...   (through the link)
    DIR/.lorareg/<name>@<version>-<digest12>/   one immutable folder per exported version
    DIR/.lorareg/.lock                          serializes concurrent exports into DIR
    DIR/.lorareg/.channel-export.json           links and folders seen unused, since when

``<name>`` is the adapter's name without its namespace. Each version lands in its own folder,
downloaded and sha256-verified through the client's atomic pull (it appears only when complete)
and made read-only; a folder path is never reused for other bytes. ``DIR/<name>`` is switched
atomically: a temporary symlink is created and renamed over the old one, so a reader sees
either the old or the new version, never nothing.

Nothing is deleted early: an engine or a reader may still hold the old folder's path (a runtime
load of the resolved path, a load in progress). A link of an adapter no longer on the channel
and a folder no wanted link points at are deleted only after the drain (``drain`` seconds since
this export first saw them unused, :mod:`registry.serving.drain`); a folder a remaining link
points at is kept. Running the export again with nothing changed downloads and switches nothing.

Only links this command made (pointing into ``.lorareg/``) are replaced or removed; an existing
file, folder or foreign symlink at ``DIR/<name>`` is a conflict (exit 3).

Files are exported byte for byte as pushed (verified by hash): vLLM's resolver accepts an
adapter only if ``base_model_name_or_path`` equals the served model's argument, so push adapters
with that field set, or use ``--pool``, which rewrites it. vLLM resolves a name once and keeps
the loaded LoRA: after a switch, unload the old one (``POST /v1/unload_lora_adapter``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.client import ChannelOut, Client, FileOut, Progress, sha256_file
from registry.errors import Conflict
from registry.refs import check_channel, check_namespace
from registry.serving.drain import DrainState, due, utcnow
from registry.serving.export import Clock, remove
from registry.serving.files import fsync_dir, locked, make_read_only

STORE = ".lorareg"
LOCK = ".lock"
STATE = ".channel-export.json"
DEFAULT_DRAIN_SECONDS = 600
VERSION_FOLDER_RE = re.compile(r"^[A-Za-z0-9][^/]*@\d+-[0-9a-f]{12}\Z")
PARTIAL_RE = re.compile(r"^\.[A-Za-z0-9][^/]*@\d+-[0-9a-f]{12}\.partial-")


@dataclass
class Exported:
    """One adapter's outcome."""

    adapter: str
    name: str
    ref: str
    version: int
    manifest_digest: str
    status: str
    folder: str
    downloaded_bytes: int = 0
    switched: bool = False


@dataclass
class ExportResult:
    namespace: str
    channel: str
    dir: str
    drain_seconds: float
    adapters: list[Exported] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    draining: dict[str, datetime] = field(default_factory=dict)

    @property
    def downloaded_bytes(self) -> int:
        return sum(a.downloaded_bytes for a in self.adapters)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "downloaded_bytes": self.downloaded_bytes}


def export_channel(client: Client, namespace: str, channel: str, root: Path, *,
                   verify: bool = False, progress: Progress | None = None,
                   drain: float = DEFAULT_DRAIN_SECONDS, clock: Clock = utcnow) -> ExportResult:
    """Make ``root`` hold the stable version of ``channel`` of every adapter of ``namespace``
    (see the module docstring); ``verify`` re-hashes versions already exported."""
    check_namespace(namespace)
    check_channel(channel)
    store = root / STORE
    store.mkdir(parents=True, exist_ok=True)
    result = ExportResult(namespace, channel, str(root), drain)
    with locked(store / LOCK):
        for chan in client.resolve_namespace(namespace, channel):
            if chan.stable is not None:
                result.adapters.append(_export_one(client, chan, root, verify, progress))
        state = DrainState.load(store / STATE)
        try:
            _drain(root, result, state, drain, clock())
        finally:
            state.save()
    return result


def _drain(root: Path, result: ExportResult, state: DrainState, drain: float,
           now: datetime) -> None:
    """Remove links and folders unused for ``drain`` seconds (links first); note the rest."""
    store = root / STORE
    wanted = {a.name for a in result.adapters}
    in_use = {a.folder for a in result.adapters}
    links = _managed_links(root)
    unused = {f"link:{n}" for n in links if n not in wanted} | {
        f"folder:{f}" for f in _version_folders(store) if f not in in_use}
    state.notice(unused, now)
    ready = due(state, unused, {}, drain, now)
    for key in sorted(unused - ready.keys()):
        result.draining[key] = state.removable_at(key, None, drain)
    for key in sorted(k for k in ready if k.startswith("link:")):
        name = key.removeprefix("link:")
        (root / name).unlink()
        result.removed.append(name)
        state.forget(key)
    fsync_dir(root)
    still_linked = set(_managed_links(root).values())
    for key in sorted(k for k in ready if k.startswith("folder:")):
        folder = key.removeprefix("folder:")
        if folder in still_linked:  # its link is still draining
            result.draining[key] = ready[key]
            continue
        remove(store / folder)
        result.pruned.append(folder)
        state.forget(key)
    for entry in store.iterdir():  # interrupted downloads: nobody loads from them
        if PARTIAL_RE.match(entry.name):
            remove(entry)


def _export_one(client: Client, chan: ChannelOut, root: Path, verify: bool,
                progress: Progress | None) -> Exported:
    ref = f"{chan.adapter}@{chan.stable}"
    version = client.version(ref)
    name = chan.adapter.split("/", 1)[1]
    folder = f"{name}@{version.version}-{version.manifest_digest[:12]}"
    item = Exported(chan.adapter, name, ref, version.version, version.manifest_digest,
                    version.status, folder)
    target = root / STORE / folder
    if not _intact(target, version.files, deep=verify):
        # Absent (or, only with --verify, damaged): download it; the pull is atomic and
        # verified, and replaces a damaged copy in one rename.
        pulled = client.pull(ref, target, progress=progress, overwrite=target.exists())
        item.downloaded_bytes = pulled.downloaded_bytes
        make_read_only(target)
    item.switched = switch_link(root / name, f"{STORE}/{folder}")
    return item


def _intact(folder: Path, files: list[FileOut], deep: bool) -> bool:
    """The folder holds exactly these files with their sizes (and, if ``deep``, hashes)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    have = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if have != {f.path for f in files}:
        return False
    for f in files:
        path = folder / f.path
        if path.stat().st_size != f.size or (deep and sha256_file(path) != f.digest):
            return False
    return True


def switch_link(link: Path, target: str) -> bool:
    """Point the symlink ``link`` at ``target`` atomically; False if it already does.

    A temporary link is created next to it and renamed over it (rename is atomic within a
    file system), so readers never find ``link`` missing or half-switched.
    """
    if link.is_symlink():
        current = str(link.readlink())
        if current == target:
            return False
        if not _is_managed(current):
            raise Conflict(f"{link} is a symlink to {current}, not one lorareg export made; "
                           "move it away first", path=str(link))
    elif link.exists():
        raise Conflict(f"{link} exists and is not a symlink lorareg export made; move it away "
                       "first (export never overwrites files in place)", path=str(link))
    tmp = link.with_name(f".{link.name}.link-{secrets.token_hex(4)}")
    tmp.symlink_to(target)
    try:
        tmp.replace(link)
    except OSError:
        tmp.unlink()
        raise
    return True


def _is_managed(target: str) -> bool:
    return target.startswith(f"{STORE}/") and "/" not in target[len(STORE) + 1:]


def _managed_links(root: Path) -> dict[str, str]:
    """``{name: store folder}`` of the symlinks in ``root`` that point into the store."""
    links = {}
    for entry in root.iterdir():
        if entry.is_symlink() and not entry.name.startswith("."):
            target = str(entry.readlink())
            if _is_managed(target):
                links[entry.name] = target[len(STORE) + 1:]
    return links


def _version_folders(store: Path) -> set[str]:
    """The version folders of the store (not the lock, the state or anything of ``--pool``)."""
    return {e.name for e in store.iterdir() if VERSION_FOLDER_RE.match(e.name)}
