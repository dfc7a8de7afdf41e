"""``lorareg export --pool``: a serving pool's desired set as the folder layout vLLM's
``lora_filesystem_resolver`` reads, drained before anything is deleted, and (given a runtime
engine) the engine's loaded adapters made to match.

Layout (``DIR`` is ``--dir``, e.g. vLLM's ``VLLM_LORA_RESOLVER_CACHE_DIR``)::

    DIR/<served name>/adapter_config.json    base_model_name_or_path = the pool's model_id
    DIR/<served name>/adapter_model.safetensors, ...   byte-identical to the push, verified
    DIR/<served name>/.lorareg.json          sidecar: pool, version, manifest digest, the
                                             original base_model_name_or_path and config hash
    DIR/.lorareg/.lock                       serializes exports into DIR
    DIR/.lorareg/.pool-export.json           the pool DIR belongs to; names seen gone, since when
    DIR/.lorareg/.incoming/                  downloads in progress (resumed by the next run)

* **The folder name is the served name** (``ns~adapter~N~digest12``, :mod:`registry.served_names`):
  vLLM looks a LoRA up as ``<dir>/<lora_name>/adapter_config.json`` and routers send the served
  name as ``model``, so nothing is ever switched: a folder, once there, keeps its bytes. Its
  name names one content; a folder with the name whose sidecar records another manifest digest
  is refused loudly (Conflict) and never overwritten.
* **vLLM accepts it**: its resolver loads an adapter only if ``base_model_name_or_path`` equals
  the model argument the server was started with, so that field is rewritten to the pool's
  ``model_id`` (every other file is exactly as pushed and sha256-verified).
* **Atomic**: a version is downloaded (verified, resumable) under ``.lorareg/.incoming``, its
  config rewritten and sidecar written there, then renamed into ``DIR`` in one step; a kill
  leaves nothing half-made where an engine looks. Deleting renames the folder away first.
* **Never early**: a folder leaves only when the pool's desired set no longer holds its name and
  the drain has passed (:mod:`registry.serving.drain`); folders without our sidecar, or made
  for another pool, are never touched.
* **Runtime engine** (:class:`registry.serving.vllm.VllmRuntime`, ``--vllm-url``): every
  desired name not loaded is loaded from its folder; a name of the pool's namespace loaded from
  this folder that left the set is unloaded after the drain, and only then its folder deleted.
  An engine's refusal is reported with its own text and changes nothing else.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.client import Client, Progress, sha256_file
from registry.errors import BadRequest, Conflict, EngineRefused, InvalidAdapter
from registry.refs import parse_pool_name
from registry.served_names import DIGEST_CHARS, parse_served_name
from registry.serving.drain import DrainState, due, parse_time, utcnow
from registry.serving.files import fsync_dir, locked, make_read_only, write_atomically
from registry.serving.vllm import LoadedAdapter, VllmRuntime

SIDECAR = ".lorareg.json"
STORE = ".lorareg"
LOCK = ".lock"
STATE = ".pool-export.json"
INCOMING = ".incoming"
TRASH = ".trash-"
CONFIG = "adapter_config.json"
SIDECAR_FORMAT = 1
Clock = Callable[[], datetime]


# ------------------------------------------------------------------ what the registry wants


@dataclass(frozen=True)
class Member:
    """A version in the pool's desired set, by the name routers send for it."""

    served_name: str
    ref: str
    manifest_digest: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Desired:
    """The pool's settings export needs, its desired set, and when names left it."""

    pool: str
    namespace: str
    model_id: str
    drain_seconds: int
    members: dict[str, Member]
    left_at: dict[str, datetime]


def fetch_desired(client: Client, pool: str) -> Desired:
    """The pool and its desired set, every served name checked against its digest."""
    namespace, _ = parse_pool_name(pool)
    info, doc = client.pool(pool), client.desired(pool)
    members: dict[str, Member] = {}
    for m in doc.members:
        member = Member(m.served_name, m.ref, m.manifest_digest, tuple(m.problems or ()))
        check_name(member.served_name, member.manifest_digest, namespace)
        known = members.setdefault(member.served_name, member)
        if known.manifest_digest != member.manifest_digest:
            raise two_digests(member.served_name, known.manifest_digest, member.manifest_digest)
    left: dict[str, datetime] = {}
    for m in doc.left:
        check_name(m.served_name, m.manifest_digest, namespace)
        when = parse_time(m.removed_at)
        left[m.served_name] = max(left.get(m.served_name, when), when)
    return Desired(info.name, namespace, info.model_id, info.drain_seconds,
                   members, left)


def check_name(name: str, manifest_digest: str, namespace: str) -> None:
    """A served name from the registry must be one of the pool's namespace and name its
    digest; anything else would put other bytes under a name."""
    ns, _, _, digest12 = parse_served_name(name)
    if ns != namespace:
        raise BadRequest(f"the registry listed {name} for a pool of namespace {namespace}")
    if manifest_digest[:DIGEST_CHARS] != digest12:
        raise two_digests(name, digest12, manifest_digest)


def two_digests(name: str, one: str, other: str) -> Conflict:
    return Conflict(f"served name {name} would map to two manifests ({one} and {other}); a "
                    "served name never names two contents, so nothing was exported",
                    served_name=name, digests=[one, other])


def is_served_name(name: str) -> bool:
    try:
        parse_served_name(name)
    except BadRequest:
        return False
    return True


# ----------------------------------------------------------------------- what DIR holds


@dataclass(frozen=True)
class Sidecar:
    """``DIR/<served name>/.lorareg.json``: what export put in the folder, and from where."""

    pool: str
    served_name: str
    ref: str
    manifest_digest: str
    model_id: str
    original_base_model_name_or_path: str | None
    original_config_sha256: str
    config_sha256: str
    format: int = SIDECAR_FORMAT

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def read(cls, folder: Path) -> Sidecar | None:
        """The folder's sidecar; None if it has none we can read (then it is not ours)."""
        try:
            doc = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
            return cls(**doc) if isinstance(doc, dict) else None
        except (OSError, ValueError, TypeError):
            return None


def scan(root: Path) -> dict[str, Sidecar | None]:
    """Every entry of ``root`` named like a served name, with its sidecar (None: not ours)."""
    found: dict[str, Sidecar | None] = {}
    for entry in root.iterdir():
        if is_served_name(entry.name):
            plain_dir = entry.is_dir() and not entry.is_symlink()
            found[entry.name] = Sidecar.read(entry) if plain_dir else None
    return found


def check_folders(desired: Desired, folders: dict[str, Sidecar | None], root: Path) -> None:
    """Refuse, before changing anything, to put a desired version where a folder with its name
    holds something else (not ours, another pool's, or other bytes)."""
    for name, member in sorted(desired.members.items()):
        if name not in folders:
            continue
        sidecar, path = folders[name], root / name
        if sidecar is None:
            raise Conflict(f"{path} exists but lorareg export did not make it (no readable "
                           f"{SIDECAR}); export never overwrites it: move it away",
                           path=str(path))
        if sidecar.manifest_digest != member.manifest_digest:
            raise Conflict(
                f"{path} holds manifest {sidecar.manifest_digest} ({sidecar.ref}) but the "
                f"registry serves {member.ref} with manifest {member.manifest_digest} under "
                "this name; a served name never maps to two digests, so nothing was changed: "
                "find out what wrote the folder", path=str(path),
                digests=[sidecar.manifest_digest, member.manifest_digest])
        if sidecar.pool != desired.pool:
            raise Conflict(f"{path} was exported for pool {sidecar.pool}, not {desired.pool}; "
                           "give each pool its own folder", path=str(path))


# ------------------------------------------------------------------------------ results


@dataclass
class Outcome:
    """What happened to one served name."""

    served_name: str
    ref: str
    status: str  # exported | unchanged | repaired | draining | removed
    downloaded_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    left_at: datetime | None = None
    removable_at: datetime | None = None
    loaded: bool | None = None


@dataclass
class EngineReport:
    """What the runtime engine was asked to do, and what it refused (its own words)."""

    url: str
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class PoolExportResult:
    pool: str
    dir: str
    model_id: str
    drain_seconds: int
    members: list[Outcome] = field(default_factory=list)
    draining: list[Outcome] = field(default_factory=list)
    removed: list[Outcome] = field(default_factory=list)
    engine: EngineReport | None = None

    @property
    def downloaded_bytes(self) -> int:
        return sum(o.downloaded_bytes for o in self.members)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "downloaded_bytes": self.downloaded_bytes}


# ------------------------------------------------------------------------------ the export


class PoolExport:
    """One export of ``pool`` into ``root`` (see the module docstring); :meth:`run` it as often
    as needed: an unchanged set downloads nothing and changes nothing.

    ``engine``: a runtime engine to bring in step; ``engine_dir``: ``root`` as the engine sees
    it (a container mount), default ``root``. ``verify`` re-hashes folders exported earlier
    (a damaged file is replaced atomically). ``clock`` is injectable for tests.
    """

    def __init__(self, client: Client, pool: str, root: Path, *,
                 engine: VllmRuntime | None = None, engine_dir: str | None = None,
                 verify: bool = False, progress: Progress | None = None,
                 clock: Clock = utcnow) -> None:
        parse_pool_name(pool)
        self.client, self.pool, self.root = client, pool, root.resolve()
        self.engine, self.verify, self.progress, self.clock = engine, verify, progress, clock
        self.engine_dir = (engine_dir or str(self.root)).rstrip("/")
        self.store = self.root / STORE

    def run(self) -> PoolExportResult:
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.store / LOCK):
            desired = fetch_desired(self.client, self.pool)
            state = DrainState.load(self.store / STATE)
            if state.owner not in (None, desired.pool):
                raise Conflict(f"{self.root} holds the export of pool {state.owner}; give pool "
                               f"{desired.pool} its own folder", path=str(self.root))
            folders = scan(self.root)
            check_folders(desired, folders, self.root)
            state.owner = desired.pool
            try:
                return self._run(desired, folders, state)
            finally:
                state.save()

    def _run(self, desired: Desired, folders: dict[str, Sidecar | None], state: DrainState
             ) -> PoolExportResult:
        result = PoolExportResult(desired.pool, str(self.root), desired.model_id,
                                  desired.drain_seconds)
        self._sweep(desired)
        for name, member in sorted(desired.members.items()):
            result.members.append(self._materialize(member, desired, folders.get(name)))
        loaded = self._load_desired(desired, result) if self.engine is not None else {}
        ours = {n for n, s in folders.items() if s is not None and s.pool == desired.pool}
        self._drain(desired, ours, loaded, state, result)
        return result

    # --- folders -------------------------------------------------------------------------

    def _materialize(self, member: Member, desired: Desired, sidecar: Sidecar | None
                     ) -> Outcome:
        """Make ``DIR/<served name>`` hold the member (conflicts were refused already)."""
        out = Outcome(member.served_name, member.ref, "unchanged",
                      problems=list(member.problems))
        folder = self.root / member.served_name
        if sidecar is None:
            fresh, out.downloaded_bytes = self._download(member, desired)
            fresh.rename(folder)
            fsync_dir(self.root)
            out.status = "exported"
        elif self._damaged(folder, member, sidecar, desired):
            out.downloaded_bytes = self._repair(folder, member, desired)
            out.status = "repaired"
        return out

    def _download(self, member: Member, desired: Desired) -> tuple[Path, int]:
        """The member, verified and prepared, in ``.incoming/<served name>``; bytes fetched."""
        dest = self.store / INCOMING / member.served_name
        if dest.exists():  # a run killed between download and rename: start that step over
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        pulled = self.client.pull(member.ref, dest, progress=self.progress)
        if pulled.manifest_digest != member.manifest_digest:
            raise two_digests(member.served_name, member.manifest_digest,
                              pulled.manifest_digest)
        prepare(dest, member, desired)
        return dest, pulled.downloaded_bytes

    def _damaged(self, folder: Path, member: Member, sidecar: Sidecar, desired: Desired
                 ) -> bool:
        """Does the folder differ from what export would write now (a file missing, added or
        resized -- or, with ``verify``, re-hashing differently -- or another model id)?"""
        if sidecar.model_id != desired.model_id:
            return True
        expected = {f.path: f for f in self.client.version(member.ref).files}
        have = files_of(folder) - {SIDECAR}
        if have != set(expected) or sha256_file(folder / CONFIG) != sidecar.config_sha256:
            return True
        for path, f in expected.items():
            if path == CONFIG:
                continue
            local = folder / path
            if local.stat().st_size != f.size or (
                    self.verify and sha256_file(local) != f.digest):
                return True
        return False

    def _repair(self, folder: Path, member: Member, desired: Desired) -> int:
        """Replace, one atomic rename each, the files that differ from a fresh download (the
        name means this content, so a reader gets the old or the right file, never a mix
        within a file); remove files that should not be there."""
        fresh, downloaded = self._download(member, desired)
        wanted = files_of(fresh)
        for path in sorted(wanted):
            source, target = fresh / path, folder / path
            if not (target.is_file() and same_file(source, target)):
                target.parent.mkdir(parents=True, exist_ok=True)
                source.replace(target)
        for path in files_of(folder) - wanted:
            (folder / path).unlink()
        shutil.rmtree(fresh)
        fsync_dir(folder)
        return downloaded

    def _sweep(self, desired: Desired) -> None:
        """Drop leftovers of interrupted runs (half-deleted folders, downloads of versions no
        longer wanted), keeping partial downloads of wanted versions: the next pull resumes."""
        for entry in self.store.glob(f"{TRASH}*"):
            remove(entry)
        incoming = self.store / INCOMING
        if not incoming.is_dir():
            return
        keep = {f".{name}.partial-{m.manifest_digest[:DIGEST_CHARS]}"
                for name, m in desired.members.items()}
        for entry in incoming.iterdir():
            if entry.name not in keep:
                remove(entry)

    # --- the engine and the drain --------------------------------------------------------

    def _load_desired(self, desired: Desired, result: PoolExportResult
                      ) -> dict[str, LoadedAdapter]:
        """Load every desired name the engine lacks; the adapters it had before."""
        assert self.engine is not None
        report = result.engine = EngineReport(self.engine.url)
        loaded = self.engine.adapters()
        for name in sorted(desired.members.keys() - loaded.keys()):
            try:
                self.engine.load(name, f"{self.engine_dir}/{name}")
                report.loaded.append(name)
            except EngineRefused as err:
                report.refused[name] = str(err.extra.get("engine_message", err.detail))
        for outcome in result.members:
            outcome.loaded = outcome.served_name in loaded or outcome.served_name in report.loaded
        return loaded

    def _ours_loaded(self, loaded: dict[str, LoadedAdapter], desired: Desired) -> set[str]:
        """Loaded adapters this export manages: a served name of the pool's namespace, loaded
        from its folder here (anything else loaded is somebody else's business)."""
        return {name for name, adapter in loaded.items()
                if is_served_name(name) and parse_served_name(name)[0] == desired.namespace
                and adapter.path.rstrip("/") == f"{self.engine_dir}/{name}"}

    def _drain(self, desired: Desired, ours: set[str], loaded: dict[str, LoadedAdapter],
               state: DrainState, result: PoolExportResult) -> None:
        """Remove (unload first, then delete) what left the set and drained; keep the rest."""
        loaded_ours = self._ours_loaded(loaded, desired)
        gone = (ours | loaded_ours) - desired.members.keys()
        now = self.clock()
        state.notice(gone, now)
        removable = due(state, gone, desired.left_at, desired.drain_seconds, now)
        for name in sorted(gone):
            out = Outcome(name, self._ref_of(name), "draining", left_at=desired.left_at.get(name),
                          removable_at=state.removable_at(name, desired.left_at.get(name),
                                                          desired.drain_seconds),
                          loaded=name in loaded_ours if self.engine is not None else None)
            if name in removable and self._remove(name, name in loaded_ours, name in ours,
                                                  result):
                out.status = "removed"
                state.forget(name)
                result.removed.append(out)
            else:
                result.draining.append(out)

    def _remove(self, name: str, is_loaded: bool, has_folder: bool,
                result: PoolExportResult) -> bool:
        """Unload ``name`` (if loaded), then delete its folder; False if the engine refused
        the unload (the folder stays: the engine may still read it)."""
        if is_loaded:
            assert self.engine is not None and result.engine is not None
            try:
                self.engine.unload(name)
            except EngineRefused as err:
                result.engine.refused[name] = str(err.extra.get("engine_message", err.detail))
                return False
            result.engine.unloaded.append(name)
        if has_folder:
            remove(self.root / name, via=self.store)
            fsync_dir(self.root)
        return True

    def _ref_of(self, name: str) -> str:
        ns, adapter, number, _ = parse_served_name(name)
        return f"{ns}/{adapter}@{number}"


# ------------------------------------------------------------------------- file helpers


def prepare(folder: Path, member: Member, desired: Desired) -> Sidecar:
    """Rewrite a verified download for the pool: ``base_model_name_or_path`` = the pool's
    ``model_id`` (vLLM's resolver requires it), the sidecar written, files made read-only."""
    path = folder / CONFIG
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidAdapter(f"{member.ref}: {CONFIG} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{member.ref}: {CONFIG} must hold a JSON object")
    original = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = desired.model_id
    data = (json.dumps(config, indent=2) + "\n").encode()
    write_atomically(path, data)
    sidecar = Sidecar(desired.pool, member.served_name, member.ref, member.manifest_digest,
                      desired.model_id, original if isinstance(original, str) else None,
                      hashlib.sha256(raw).hexdigest(), hashlib.sha256(data).hexdigest())
    write_atomically(folder / SIDECAR, sidecar.to_bytes())
    make_read_only(folder)
    return sidecar


def files_of(folder: Path) -> set[str]:
    """Relative POSIX paths of the regular files under ``folder``."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink()}


def same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def remove(path: Path, via: Path | None = None) -> None:
    """Delete a file or folder; with ``via``, first rename it there, so it disappears from
    where an engine looks in one step instead of file by file."""
    if via is not None and path.is_dir() and not path.is_symlink():
        moved = via / f"{TRASH}{path.name}-{secrets.token_hex(4)}"
        path.rename(moved)
        path = moved
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
