"""Helpers of the CLI and e2e tests: servers shared by every test of a module (``live_server``
costs ~5 s per test), the ``lorareg`` console script run as real subprocesses (several at once
when independent), and a base folder with one tensor changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fixtures.server import (
    BIN,
    ROOT,
    LiveServer,
    base_env,
    bootstrap_admin,
    free_port,
    start_uvicorn,
    wait_ready,
)

LORAREG = str(BIN / "lorareg")


@contextmanager
def uvicorn_server(root: Path, database_url: str, blob_url: str,
                   **extra_env: str) -> Iterator[LiveServer]:
    """The production entry point on ``database_url``/``blob_url`` with a bootstrap admin token;
    ``env`` is what a CLI subprocess needs (URL, token, a private HOME and fingerprint cache)."""
    token = bootstrap_admin(database_url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=database_url,
                   LORAREG_BLOB_URL=blob_url, **extra_env)
    server = start_uvicorn(env, root / "server.log")
    server.admin_token = token
    server.env = {**env, "LORAREG_URL": server.url, "LORAREG_TOKEN": token,
                  "HOME": str(root / "home"), "LORAREG_CONFIG": str(root / "cli.json"),
                  "LORAREG_FINGERPRINT_CACHE": str(root / "fingerprints.sqlite")}
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def embedded_server(root: Path, **extra_env: str) -> Iterator[LiveServer]:
    """``lorareg serve`` (SQLite, local blobs, no auth on loopback, an in-process worker
    polling every 0.1 s), with a private HOME (so an empty Hugging Face cache)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(LORAREG_HOME=str(root / ".lorareg"), LORAREG_URL=url,
                   LORAREG_WORKER_POLL_SECONDS="0.1", HOME=str(root / "home"),
                   LORAREG_FINGERPRINT_CACHE=str(root / "worker-fingerprints.sqlite"),
                   **extra_env)
    env = {k: v for k, v in env.items() if not k.startswith("HF_") or k in extra_env}
    log = root / "server.log"
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([LORAREG, "serve", "--port", str(port)], env=env, cwd=root,
                                stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(url, None, env, proc, log)
    try:
        wait_ready(url, proc)
        server.env = {**env, "HOME": str(root / "home"), "LORAREG_CONFIG": str(root / "cli.json"),
                      "LORAREG_FINGERPRINT_CACHE": str(root / "fingerprints.sqlite")}
        yield server
    finally:
        server.stop()


@dataclass
class Done:
    """A finished ``lorareg`` subprocess."""

    args: Sequence[str]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, (self.args, self.stderr)
        return json.loads(self.stdout)

    def error_line(self, code: int) -> str:
        """The one ``error: ...`` line of an expected failure with exit ``code``."""
        assert self.code == code, (self.args, self.code, self.stdout, self.stderr)
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        assert "Traceback" not in self.stdout + self.stderr
        return lines[0]


def run(env: Mapping[str, str], *args: str, timeout: float = 300) -> Done:
    """``lorareg ARGS`` as a subprocess with ``env``."""
    return run_all([(env, list(args))], timeout=timeout)[0]


def run_all(calls: Sequence[tuple[Mapping[str, str], Sequence[str]]],
            timeout: float = 300) -> list[Done]:
    """Independent ``lorareg`` runs started together (each spends ~1 s importing)."""
    procs = [subprocess.Popen([LORAREG, *args], env=dict(env), cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for env, args in calls]
    done = []
    for (_env, args), proc in zip(calls, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        done.append(Done(args, proc.returncode, out, err))
    return done



def changed_copy(base: Path, dest: Path) -> str:
    """Copy a base and change one value of one tensor (same dtype and shape); its name."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(base, dest)
    shard = sorted(dest.glob("*.safetensors"))[-1]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].reshape(-1)[0] += 1.0
    save_file(tensors, shard, metadata={"format": "pt"})
    return name
