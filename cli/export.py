"""``lorareg export``: a channel's stable versions of a whole namespace as a folder that vLLM's
``lora_filesystem_resolver`` (``VLLM_LORA_RESOLVER_CACHE_DIR``) and similar loaders read.

Layout (``DIR`` is the folder given with ``--dir``)::

    DIR/<name>                  -> .lorareg/<name>@<version>-<manifest digest[:12]>  (symlink)
    DIR/<name>/adapter_config.json, adapter_model.safetensors, ...   (through the link)
    DIR/.lorareg/<name>@<version>-<digest12>/   one immutable folder per exported version
    DIR/.lorareg/.lock                          serializes concurrent exports into DIR

vLLM looks a LoRA up as ``<dir>/<lora_name>/adapter_config.json``, so ``<name>`` is the adapter's
name without its namespace. Each version lands in its own folder, downloaded and sha256-verified
through the client's atomic pull (it appears only when complete) and made read-only; a path is
never reused for other bytes, because serving caches (vLLM's LoRA and prefix caches, LoRAX's
S3 cache) key on the path and would keep stale weights. ``DIR/<name>`` is switched atomically:
a temporary symlink is created and renamed over the old one, so a reader sees either the old
or the new version, never a mix or nothing. Folders no link points at any more (an older
version, an adapter no longer on the channel) are deleted only after every link is switched.
Running the export again with nothing changed downloads nothing and switches nothing.

Only links this command made (pointing into ``.lorareg/``) are replaced or removed; an
existing file, folder or foreign symlink at ``DIR/<name>`` is a conflict (exit 3).

Two things stay the serving side's job. vLLM's resolver only accepts an adapter whose
``adapter_config.json`` has ``peft_type: LORA`` and a ``base_model_name_or_path`` equal to the
served model's name; files are exported byte for byte as pushed (they are verified by hash), so
push adapters with that field set. And vLLM resolves a name once and keeps the loaded LoRA:
after a switch, unload the old one (``POST /v1/unload_lora_adapter``) so the next request loads
the new version through the link.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from cli import output
from cli.app import App, json_option, pass_app
from registry.client import Client
from registry.errors import Conflict
from registry.refs import check_channel, check_namespace
from registry.transfer import Progress, sha256_file

STORE = ".lorareg"
LOCK = ".lock"


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
    adapters: list[Exported] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    @property
    def downloaded_bytes(self) -> int:
        return sum(a.downloaded_bytes for a in self.adapters)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "downloaded_bytes": self.downloaded_bytes}


def export_channel(client: Client, namespace: str, channel: str, root: Path, *,
                   verify: bool = False, progress: Progress | None = None) -> ExportResult:
    """Make ``root`` hold the stable version of ``channel`` of every adapter of ``namespace``
    (see the module docstring); ``verify`` re-hashes versions already exported."""
    check_namespace(namespace)
    check_channel(channel)
    store = root / STORE
    store.mkdir(parents=True, exist_ok=True)
    result = ExportResult(namespace, channel, str(root))
    with _locked(store / LOCK):
        for chan in client.resolve_namespace(namespace, channel):
            if chan["stable"] is not None:
                result.adapters.append(_export_one(client, chan, root, verify, progress))
        wanted = {a.name for a in result.adapters}
        result.removed = [name for name in _managed_links(root) if name not in wanted]
        for name in result.removed:
            (root / name).unlink()
        _fsync_dir(root)
        result.pruned = _prune(store, set(_managed_links(root).values()))
    return result


def _export_one(client: Client, chan: dict[str, Any], root: Path, verify: bool,
                progress: Progress | None) -> Exported:
    ref = f"{chan['adapter']}@{chan['stable']}"
    version = client.version(ref)
    name = chan["adapter"].split("/", 1)[1]
    folder = f"{name}@{version['version']}-{version['manifest_digest'][:12]}"
    item = Exported(chan["adapter"], name, ref, version["version"], version["manifest_digest"],
                    version["status"], folder)
    target = root / STORE / folder
    intact = _intact(target, version["files"], deep=verify)
    if not intact:
        # Absent (or, only with --verify, damaged): download it; the pull is atomic and
        # verified, and replaces a damaged copy in one rename.
        pulled = client.pull(ref, target, progress=progress, overwrite=target.exists())
        item.downloaded_bytes = int(pulled["downloaded_bytes"])
        _make_read_only(target)
    item.switched = switch_link(root / name, f"{STORE}/{folder}")
    return item


def _intact(folder: Path, files: list[dict[str, Any]], deep: bool) -> bool:
    """The folder holds exactly these files with their sizes (and, if ``deep``, hashes)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    have = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if have != {f["path"] for f in files}:
        return False
    for f in files:
        path = folder / f["path"]
        if path.stat().st_size != int(f["size"]) or (deep and sha256_file(path) != f["digest"]):
            return False
    return True


def _make_read_only(folder: Path) -> None:
    """Files of an exported version are never written again; make that visible."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


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


def _prune(store: Path, keep: set[str]) -> list[str]:
    """Delete every folder of the store no link points at (older versions, adapters gone
    from the channel, leftovers of interrupted downloads)."""
    pruned = []
    for entry in sorted(store.iterdir()):
        if entry.name == LOCK or entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        pruned.append(entry.name)
    return pruned


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: concurrent exports into one folder take turns."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@click.command()
@click.argument("namespace")
@click.option("--channel", "-c", required=True, metavar="NAME", help="Channel, e.g. prod.")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to materialize (e.g. vLLM's VLLM_LORA_RESOLVER_CACHE_DIR).")
@click.option("--verify", is_flag=True,
              help="Re-hash versions exported earlier (a damaged one is downloaded again).")
@json_option
@pass_app
def export(app: App, namespace: str, channel: str, root: Path, verify: bool) -> None:
    """Materialize the CHANNEL stable version of every adapter of NAMESPACE into --dir.

    DIR/<name> is a symlink, switched atomically, to an immutable verified folder
    DIR/.lorareg/<name>@<version>-<digest>/; vLLM's lora_filesystem_resolver finds
    DIR/<name>/adapter_config.json. Unchanged versions are not downloaded again; folders no
    longer linked are deleted after the switch. Run it on a schedule or from a webhook.
    """
    with app.progress_bar("export") as bar:
        result = export_channel(app.client(), namespace, channel, root.resolve(),
                                verify=verify, progress=bar)
    for item in result.adapters:
        if item.status == "yanked":
            click.echo(f"warning: {item.ref}, stable on {channel}, is yanked; roll the channel "
                       "back to stop serving it", err=True)
    if app.json:
        output.emit_json(result.to_json())
        return
    for item in result.adapters:
        change = "switched" if item.switched else "unchanged"
        app.say(f"{item.name} -> {STORE}/{item.folder} ({change}, "
                f"{output.size(item.downloaded_bytes)} downloaded)")
    for name in result.removed:
        app.say(f"{name}: removed (no longer on {channel})")
    app.note(f"{len(result.adapters)} adapters in {result.dir}, "
             f"{output.size(result.downloaded_bytes)} downloaded, "
             f"{len(result.pruned)} old folders pruned")
