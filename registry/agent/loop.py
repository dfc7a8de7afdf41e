"""The agent's reconcile loop: one serving replica kept in step with its pool.

Each turn (about every ``interval``):

1. **Watch**: ask for the pool's desired set with its ETag; the registry holds the answer up
   to ``interval`` seconds until it changes (a long poll), so a promotion is heard at once.
2. **Verify the base**: fingerprint ``model_dir`` (cached per file by path, size, mtime,
   ctime and inode, as ``lorareg verify`` does, so an unchanged folder costs a few ``stat``
   calls) and compare with the pool's base fingerprint. On a mismatch nothing is pulled or
   loaded, what this agent loaded is unloaded, and the heartbeat says ``incompatible`` with
   the local fingerprint (the registry holds the pool's).
3. **Reconcile** (when the set changed, something is still draining or refused, or the engine
   lacks a desired name, e.g. it restarted): one :class:`registry.serving.export.PoolExport`
   run into ``cache_dir`` -- verified downloads renamed into place in one step, folders
   named by served name (what vLLM's filesystem resolver reads), loads and unloads through the
   runtime API, deletion only after the pool's drain. Then LRU eviction beyond
   ``cache_limit`` of folders neither desired, draining nor loaded.
4. **Heartbeat**: the whole residency (names with the digests verified at download, the
   engine's refusals in its own words, cache bytes, the last error).

A failure (registry down, network, engine unreachable) changes nothing locally: what is loaded
stays loaded; the next turn retries after a backoff that doubles up to ``max_backoff``.
SIGTERM (:meth:`Agent.stop`) ends the turn where it is (a download in progress stays under
``.lorareg/.incoming`` to be resumed or swept) and sends a last heartbeat.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from registry import __version__
from registry.agent.cache import cache_bytes, evict
from registry.agent.engine import VllmEngine
from registry.client import Client, ReportedAdapter, Residency
from registry.errors import RegistryError
from registry.fingerprint import fingerprint_dir
from registry.fingerprint_cache import FingerprintCache
from registry.served_names import DIGEST_CHARS, parse_served_name
from registry.serving.export import PoolExport, PoolExportResult, Sidecar, is_served_name
from registry.statuses import AdapterState
from registry.wire import DesiredOut

ENGINE = "vllm"
Log = Callable[[str], None]


class Stopped(BaseException):
    """Raised into the loop by :meth:`Agent.stop` (a BaseException, so no ``except
    Exception`` on the way swallows it)."""


@dataclass(frozen=True)
class AgentOptions:
    """What ``lorareg agent`` was asked to do (see the module docstring)."""

    pool: str
    model_dir: Path
    cache_dir: Path
    replica_id: str
    engine_url: str | None = None
    engine_api_key: str | None = None
    interval: float = 2.0
    cache_limit: int | None = None
    fingerprint_cache: Path | None = None
    max_backoff: float = 30.0


def default_replica_id(engine_url: str | None, cache_dir: Path) -> str:
    """``host@engine-host:port``, or ``host@cache-<hash of the folder>`` without an engine
    (several filesystem-mode agents may share a host)."""
    where = (urlsplit(engine_url).netloc if engine_url else
             "cache-" + hashlib.sha256(str(cache_dir.resolve()).encode()).hexdigest()[:10])
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", f"{socket.gethostname()}@{where}")[:128]


class Agent:
    """The loop of one replica; :meth:`run` until :meth:`stop`."""

    def __init__(self, client: Client, options: AgentOptions, log: Log = print) -> None:
        self.client, self.opts, self.log = client, options, log
        self.engine = (VllmEngine(options.engine_url, api_key=options.engine_api_key)
                       if options.engine_url else None)
        self.fingerprints = FingerprintCache.default(options.fingerprint_cache)
        self.doc: DesiredOut | None = None
        self.local_fingerprint: str | None = None
        self.engine_base: str | None = None
        self.dirty = True  # reconcile on the next turn, whatever the engine shows
        self.last: PoolExportResult | None = None
        self.error: str | None = None
        self.failures = 0
        self.stopping = False

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile until stopped, then send a last heartbeat."""
        self.log(f"agent {self.opts.replica_id}: pool {self.opts.pool}, cache "
                 f"{self.opts.cache_dir}, engine {self.opts.engine_url or 'filesystem resolver'}")
        try:
            while True:
                self.turn()
        except Stopped:
            self.log("stopping: last heartbeat")
        finally:
            self.stopping = True
            self.heartbeat()
            if self.engine is not None:
                self.engine.close()

    def stop(self) -> None:
        """Ask the loop to end (a signal handler's job): raises into the running turn once."""
        if not self.stopping:
            self.stopping = True
            raise Stopped

    def turn(self) -> None:
        """One watch, verify, reconcile and heartbeat; a failure waits a backoff."""
        try:
            self.watch(self.opts.interval if self.failures == 0 else 0)
            if self.base_ok():
                self.reconcile()
            else:
                self.unload_ours()
            self.error, self.failures = None, 0
        except (RegistryError, httpx.HTTPError, OSError) as exc:
            self.failed(exc)
        self.heartbeat()
        if self.failures:
            time.sleep(min(self.opts.interval * 2 ** (self.failures - 1), self.opts.max_backoff))

    def failed(self, exc: BaseException) -> None:
        self.error = str(exc) or type(exc).__name__
        self.failures += 1
        self.dirty = True  # whatever half-happened, look again next time
        self.log(f"error: {self.error}")

    # --- the steps -----------------------------------------------------------------------

    def watch(self, wait: float) -> None:
        """The desired set, held by the registry up to ``wait`` seconds until it changes."""
        held = None if self.doc is None else self.doc.revision
        doc = self.client.poll_desired(self.opts.pool, held, wait=wait)
        if doc is not None:
            if self.doc is not None:
                self.log(f"desired set changed: revision {doc.revision}")
            self.doc, self.dirty = doc, True

    def base_ok(self) -> bool:
        """Do the local weights hash to the pool's base fingerprint? Re-checked every turn
        (cached per file); the engine's base changing forces a reconcile."""
        assert self.doc is not None
        if self.engine is not None:
            root = self.engine.base_root()
            if root != self.engine_base:
                self.engine_base, self.dirty = root, True
        before, self.local_fingerprint = self.local_fingerprint, None
        digest = fingerprint_dir(self.opts.model_dir, cache=self.fingerprints).digest
        self.local_fingerprint = digest
        if digest != self.doc.base_fingerprint:
            if digest != before:  # once per change, not every turn
                self.log(f"incompatible base: {self.opts.model_dir} hashes to {digest}, the "
                         f"pool's base is {self.doc.base_fingerprint}: loading nothing")
            return False
        return True

    def reconcile(self) -> None:
        if not (self.dirty or self._unsettled() or self._engine_lacks()):
            return
        result = PoolExport(self.client, self.opts.pool, self.opts.cache_dir,
                            engine=self.engine).run()
        self.last, self.dirty = result, False
        self._log_result(result)
        self.evict(result)

    def _unsettled(self) -> bool:
        """Something the last run left to do: a drain to finish or a refused load."""
        last = self.last
        return last is None or bool(last.draining) or bool(last.engine and last.engine.refused)

    def _engine_lacks(self) -> bool:
        """A desired name the engine does not list (it restarted, or someone unloaded it)."""
        if self.engine is None or self.doc is None:
            return False
        wanted = {m.served_name for m in self.doc.members}
        return not wanted <= self.engine.adapters().keys()

    def _log_result(self, result: PoolExportResult) -> None:
        done = [f"{o.status} {o.served_name}" for o in [*result.members, *result.removed]
                if o.status != "unchanged"]
        if result.engine is not None:
            done += [f"loaded {n}" for n in result.engine.loaded]
            done += [f"unloaded {n}" for n in result.engine.unloaded]
            done += [f"refused {n}: {why}" for n, why in result.engine.refused.items()]
        if done:
            self.log("; ".join(done))

    def evict(self, result: PoolExportResult) -> None:
        """Cache folders beyond the limit, least recently used first, never one desired,
        draining or loaded."""
        if self.opts.cache_limit is None:
            return
        keep = {o.served_name for o in [*result.members, *result.draining]}
        keep |= self._ours_loaded()
        for name in evict(self.opts.cache_dir, self.opts.pool, self.opts.cache_limit, keep):
            self.log(f"evicted {name}")

    def unload_ours(self) -> None:
        """On an incompatible base: unload every name this agent loaded (folders stay: the
        filesystem resolver is the engine's call, and a drained folder goes only by drain)."""
        self.dirty = True
        if self.engine is None:
            return
        for name in sorted(self._ours_loaded()):
            self.engine.unload(name)
            self.log(f"unloaded {name} (incompatible base)")

    def _ours_loaded(self) -> set[str]:
        """Engine adapters this agent manages: our pool's served names loaded from our
        cache folder."""
        if self.engine is None:
            return set()
        root = str(self.opts.cache_dir.resolve())
        return {n for n, a in self.engine.adapters().items()
                if is_served_name(n) and a.path.rstrip("/") == f"{root}/{n}"}

    # --- the heartbeat -------------------------------------------------------------------

    def heartbeat(self) -> None:
        try:
            residency = self.residency()
            self.client.report_residency(self.opts.pool, self.opts.replica_id, residency)
        except (RegistryError, httpx.HTTPError, OSError) as exc:
            self.log(f"heartbeat failed: {exc}")

    def residency(self) -> Residency:
        error = self.error
        try:
            adapters = self.held()
        except (RegistryError, httpx.HTTPError) as exc:  # the engine is down: say so
            adapters, error = [], error or str(exc)
        return Residency(
            engine=ENGINE, agent_version=__version__, base_fingerprint=self.local_fingerprint,
            adapters=adapters, engine_url=self.opts.engine_url,
            interval_seconds=max(1, round(self.opts.interval)),
            cache_bytes=cache_bytes(self.opts.cache_dir), error=error)

    def held(self) -> list[ReportedAdapter]:
        """What this replica serves, each name with the digest its folder was verified
        against, and the engine's refusals; nothing on an incompatible base in filesystem
        mode (the agent pulls nothing for it, and says so with the verdict)."""
        compatible = self.doc is not None and (
            self.local_fingerprint == self.doc.base_fingerprint)
        if self.engine is None:
            names = self._folders() if compatible else set()
        else:
            names = self._ours_loaded()
        out = [self._reported(n) for n in sorted(names)]
        refused = self.last.engine.refused if self.last and self.last.engine else {}
        out += [ReportedAdapter(n, AdapterState.FAILED, error=why)
                for n, why in sorted(refused.items()) if n not in names and compatible]
        return [a for a in out if a.digest is not None or a.state != AdapterState.LOADED]

    def _folders(self) -> set[str]:
        root = self.opts.cache_dir
        if not root.is_dir():
            return set()
        return {p.name for p in root.iterdir() if is_served_name(p.name) and p.is_dir()}

    def _reported(self, name: str) -> ReportedAdapter:
        sidecar = Sidecar.read(self.opts.cache_dir / name)
        ok = sidecar is not None and sidecar.pool == self.opts.pool and (
            sidecar.manifest_digest[:DIGEST_CHARS] == parse_served_name(name)[3])
        return ReportedAdapter(name, AdapterState.LOADED,
                               digest=sidecar.manifest_digest if ok and sidecar else None)
