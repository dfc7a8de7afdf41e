"""Safetensors header bombs pushed to a real API process (uvicorn, production mode, PostgreSQL):
each is refused with 422 ``invalid_safetensors`` and a reason, changes nothing, and the API
process's peak RSS grows by less than :data:`RSS_BOUND` while refusing it.

Before the caps, a 58 MB header of tiny tensors (under the format's 100 MB limit) took a minute
to refuse and grew the API process from 137 MB to 1 GB.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from registry.db import make_engine, make_session_factory, transaction
from registry.safetensors_io import DEFAULT_MAX_HEADER, DEFAULT_MAX_TENSORS, MAX_HEADER_LEN
from registry.services import tokens
from registry.services.context import Actor
from tests.cli.helpers import run
from tests.fixtures.adapters import adapter_files
from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
#: The documented bound on the API process's peak RSS growth while it refuses a header bomb at
#: the default caps. Measured on this change: 0, 9.7 and 1.0 MiB for the three bombs below;
#: on 005c1fb, 1,409 MiB for the first (peak 1.6 GB). The 3x headroom is for allocator noise.
RSS_BOUND = 32 * MiB
BASE = {"hub_id": "tiny/llama", "revision": "0123456789abcdef0123456789abcdef01234567"}
PEFT_NAME = "base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"


@dataclass
class Blob:
    path: Path
    digest: str
    size: int

    def entry(self, name: str) -> dict[str, Any]:
        return {"path": name, "digest": self.digest, "size": self.size}


def write_bomb(path: Path, header_len: int, count: int | None = None,
               name: str = "t{i}") -> Blob:
    """A safetensors file whose ``header_len``-byte header lists 1-byte U8 tensors (``count``,
    or as many as fit), written as a stream; its data region is one byte short, so a parser
    that reads everything refuses it only at the very end."""
    hasher = hashlib.sha256()
    with path.open("wb") as f:

        def out(data: bytes) -> None:
            f.write(data)
            hasher.update(data)

        out(header_len.to_bytes(8, "little") + b"{")
        used, n = 2, 0  # "{" and "}"
        while count is None or n < count:
            entry = (f'{"," if n else ""}"{name.format(i=n)}":{{"dtype":"U8","shape":[1],'
                     f'"data_offsets":[{n},{n + 1}]}}').encode()
            if used + len(entry) > header_len:
                break
            out(entry)
            used, n = used + len(entry), n + 1
        out(b"}" + b" " * (header_len - used) + b"\0" * (n - 1))
    assert count is None or n == count
    return Blob(path, hasher.hexdigest(), path.stat().st_size)


@dataclass
class Peak:
    """RSS of a process before a block and its peak during it."""

    baseline: int
    samples: list[int] = field(default_factory=list)
    kernel_peak: int | None = None

    @property
    def growth(self) -> int:
        return max([*self.samples, self.kernel_peak or 0]) - self.baseline


@contextmanager
def rss_peak(pid: int) -> Iterator[Peak]:
    """psutil samples the RSS every 20 ms in a thread; where Linux allows, the kernel's own
    high-water mark (VmHWM, reset through /proc/<pid>/clear_refs first) catches any peak that
    falls between two samples."""
    process = psutil.Process(pid)
    kernel = _reset_kernel_peak(pid)
    peak = Peak(baseline=process.memory_info().rss)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.samples.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak.samples.append(process.memory_full_info().rss)
        if kernel:
            peak.kernel_peak = _kernel_peak(pid)


def _reset_kernel_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux 4.0+)
    except OSError:
        return False
    return True


def _kernel_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ok"
    folder.mkdir()
    for name, data in adapter_files().items():
        (folder / name).write_bytes(data)
    return folder


def upload(server: LiveServer, token: str, path: Path) -> Blob:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            hasher.update(chunk)
    blob = Blob(path, hasher.hexdigest(), path.stat().st_size)

    def body() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(4 * MiB):
                yield chunk

    response = httpx.put(f"{server.url}/api/v1/blobs/{blob.digest}", content=body(),
                         timeout=120, headers={**auth(token), "Content-Length": str(blob.size),
                                               "Content-Type": "application/octet-stream"})
    assert response.status_code in (200, 201), response.text
    return blob


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push(server: LiveServer, token: str, adapter: str, config: Blob, weights: Blob
         ) -> httpx.Response:
    body = {"files": [config.entry("adapter_config.json"),
                      weights.entry("adapter_model.safetensors")], "base": BASE}
    return httpx.post(f"{server.url}/api/v1/adapters/{adapter}/versions", json=body,
                      headers=auth(token), timeout=120)


def namespace_token(database_url: str, namespace: str) -> str:
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("test"), name=f"w-{namespace}",
                                               role="writer", namespace=namespace)
        return plaintext
    finally:
        engine.dispose()


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "invalid_safetensors", problem
    assert problem["detail"].startswith("adapter_model.safetensors: "), problem
    assert reason in problem["detail"], problem


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_header_bombs_are_refused_in_bounded_memory(
    live_server: LiveServer, fresh_db_url: str, adapter_dir: Path, tmp_path: Path
) -> None:
    server, admin = live_server, str(live_server.admin_token)
    bomb_dir = tmp_path / "bomb"  # an adapter folder, for the CLI
    bomb_dir.mkdir()
    (bomb_dir / "adapter_config.json").write_bytes(
        (adapter_dir / "adapter_config.json").read_bytes())
    old_cap = write_bomb(bomb_dir / "adapter_model.safetensors", MAX_HEADER_LEN - 8)
    at_caps = write_bomb(tmp_path / "at-caps.safetensors", DEFAULT_MAX_HEADER - 8,
                         DEFAULT_MAX_TENSORS, PEFT_NAME)
    packed = write_bomb(tmp_path / "packed.safetensors", DEFAULT_MAX_HEADER - 8)
    print(f"bombs: {old_cap.size} bytes; {at_caps.size} bytes with {DEFAULT_MAX_TENSORS} "
          f"tensors; {packed.size} bytes packed")

    # The CLI refuses the bomb locally, with the same parser: nothing is uploaded.
    line = run(server.env, "push", str(bomb_dir), "--adapter", "acme/bomb", "--base",
               f"{BASE['hub_id']}@{BASE['revision']}").error_line(4)
    assert f"header length {MAX_HEADER_LEN - 8} exceeds the {DEFAULT_MAX_HEADER}-byte" in line
    missing = httpx.post(f"{server.url}/api/v1/blobs/missing", headers=auth(admin), timeout=10,
                         json={"digests": [old_cap.digest]}).json()["missing"]
    assert missing == [old_cap.digest]

    # Warm the server's push path up with a valid adapter, so the baseline includes it.
    config = upload(server, admin, adapter_dir / "adapter_config.json")
    good = upload(server, admin, adapter_dir / "adapter_model.safetensors")
    assert push(server, admin, "acme/ok", config, good).status_code == 201

    cases = [(old_cap, f"header length {MAX_HEADER_LEN - 8} exceeds the {DEFAULT_MAX_HEADER}"
                       "-byte limit (LORAREG_MAX_SAFETENSORS_HEADER)"),
             (at_caps, "run past the end"),  # every tensor parsed, the last one is truncated
             (packed, f"more than {DEFAULT_MAX_TENSORS} tensors, the limit "
                      "(LORAREG_MAX_SAFETENSORS_TENSORS)")]
    for blob, reason in cases:
        weights = upload(server, admin, blob.path)
        assert (weights.digest, weights.size) == (blob.digest, blob.size)
        with rss_peak(server.proc.pid) as peak:
            response = push(server, admin, "acme/bomb", config, weights)
        print(f"{blob.path.name}: peak RSS growth {peak.growth / MiB:.1f} MiB "
              f"({len(peak.samples)} samples, VmHWM {'read' if peak.kernel_peak else 'n/a'})")
        assert peak.growth < RSS_BOUND, f"{blob.path.name}: {peak.growth / MiB:.1f} MiB"
        assert_refused(response, reason)

    # Another namespace's writer cannot push there either; nothing was created by anyone.
    other = namespace_token(fresh_db_url, "other")
    denied = push(server, other, "acme/bomb", config, weights)
    assert denied.status_code == 403, denied.text
    shown = httpx.get(f"{server.url}/api/v1/adapters/acme/bomb", headers=auth(admin), timeout=10)
    assert shown.status_code == 404, shown.text
    events = httpx.get(f"{server.url}/api/v1/audit", headers=auth(admin), timeout=10,
                       params={"namespace": "acme"}).json()
    assert not [e for e in events["items"] if "bomb" in json.dumps(e)], events
