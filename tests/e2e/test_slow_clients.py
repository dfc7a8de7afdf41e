"""Slow clients against a real uvicorn process on PostgreSQL: uploads that trickle their body
must not starve the server, an upload that stalls gets a 408, and a token over its upload
cap gets a 429 before any byte is read. Nothing half-uploaded ever becomes visible.

The attack (issue 15, item 5): more slow uploads than the thread pool has threads (anyio's
default is 40), each sending one byte a second. While they trickle, ``/healthz``, ``whoami``,
the server version, a version read and a small push must complete; timeouts are generous
(30 s) because the assertion is that they complete, not how fast.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from registry.client import Client
from registry.db import make_engine, make_session_factory, transaction
from registry.services import tokens
from registry.services.context import Actor
from tests.fixtures.adapters import adapter_files
from tests.fixtures.server import LiveServer, base_env, bootstrap_admin, start_uvicorn

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("backend", ["postgresql"], indirect=True)]

POOL = 40  # anyio's default thread pool, where FastAPI runs every `def` route
SLOW_UPLOADS = 45  # more than POOL
DECLARED = 1024 * 1024  # what each slow upload announces in Content-Length
PATIENCE = 30.0  # seconds; a bound on waiting, never an assertion about speed
BASE = "tiny/llama@0123456789abcdef0123456789abcdef01234567"


@contextmanager
def api_server(database_url: str, root: Path, **settings: str) -> Iterator[LiveServer]:
    """The production entry point on PostgreSQL with local blobs under ``root/blobs``."""
    admin = bootstrap_admin(database_url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=database_url,
                   LORAREG_BLOB_URL=f"file://{root / 'blobs'}", **settings)
    server = start_uvicorn(env, root / "server.log")
    server.admin_token = admin
    try:
        yield server
    finally:
        server.stop()


def make_token(database_url: str, role: str, namespace: str | None, name: str) -> str:
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, Actor("test"), name=name, role=role,
                                               namespace=namespace)
        return plaintext
    finally:
        engine.dispose()


class RawUpload:
    """``PUT /api/v1/blobs/<digest>`` on a socket of its own, the body sent by hand."""

    def __init__(self, server: LiveServer, token: str, data: bytes) -> None:
        self.data, self.sent = data, 0
        self.digest = hashlib.sha256(data).hexdigest()
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=PATIENCE)
        self.sock.sendall((f"PUT /api/v1/blobs/{self.digest} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                           f"Authorization: Bearer {token}\r\n"
                           "Content-Type: application/octet-stream\r\n"
                           f"Content-Length: {len(data)}\r\n\r\n").encode())

    def send(self, n: int) -> None:
        self.sock.sendall(self.data[self.sent:self.sent + n])
        self.sent += n

    def response(self) -> tuple[int, dict[str, str], dict[str, object]]:
        """Status, headers and JSON body of the answer (read until the body is complete)."""
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += self._recv()
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            body += self._recv()
        return int(lines[0].split()[1]), headers, json.loads(body)

    def closed_by_server(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection before answering")
        return chunk


class Trickle:
    """Sends one byte of each upload every ``interval`` seconds from a background thread."""

    def __init__(self, uploads: list[RawUpload], interval: float = 1.0) -> None:
        self.uploads, self.interval = uploads, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for upload in self.uploads:
                upload.send(1)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def staged(root: Path) -> list[Path]:
    """Uploads in progress: the local store's staging files."""
    folder = root / "blobs" / "uploads"
    return list(folder.iterdir()) if folder.is_dir() else []


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition()`` until it holds; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def missing(server: LiveServer, digests: list[str]) -> list[str]:
    answer = httpx.post(f"{server.url}/api/v1/blobs/missing", json={"digests": digests},
                        headers={"Authorization": f"Bearer {server.admin_token}"},
                        timeout=PATIENCE)
    answer.raise_for_status()
    result: list[str] = answer.json()["missing"]
    return result


def slow_payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (DECLARED // 32)


def test_slow_uploads_do_not_starve_the_server(fresh_db_url: str, tmp_path: Path) -> None:
    # Several writer tokens, each within the default cap of 8 uploads in flight: the attack
    # needs only what a few CI pipelines hold. Another team pushes meanwhile.
    writers = [make_token(fresh_db_url, "writer", "evil", f"ci-{i}") for i in range(6)]
    victim = make_token(fresh_db_url, "writer", "acme", "acme-ci")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name, data in adapter_files(seed=1).items():
        (adapter / name).write_bytes(data)
    with api_server(fresh_db_url, tmp_path) as server:
        uploads = [RawUpload(server, writers[i % len(writers)], slow_payload(i))
                   for i in range(SLOW_UPLOADS)]
        try:
            with Trickle(uploads):
                # As many slow uploads inside the upload handler (their staging files exist)
                # as the pool has threads: the server used to stop answering here.
                wait_for(lambda: len(staged(tmp_path)) >= POOL, "the slow uploads to start")
                answers = still_served(server, victim, adapter)
                # All of them in flight at once, none finished or refused: the attack is real.
                wait_for(lambda: len(staged(tmp_path)) == SLOW_UPLOADS, "all slow uploads")
        finally:
            for upload in uploads:
                upload.close()
        assert answers["healthz"] == {"status": "ok"}
        assert answers["whoami"]["role"] == "writer"  # type: ignore[index]
        assert "version" in answers["server version"]  # type: ignore[operator]
        assert answers["pushed"]["created"] is True  # type: ignore[index]
        assert answers["version"]["version"] == 1  # type: ignore[index]
        # The abandoned uploads are discarded: nothing staged, nothing visible.
        wait_for(lambda: staged(tmp_path) == [], "the slow uploads' staging files to go")
        digests = [u.digest for u in uploads]
        assert sorted(missing(server, digests)) == sorted(digests)


def still_served(server: LiveServer, token: str, adapter: Path) -> dict[str, object]:
    """The calls that must complete during the attack (each within PATIENCE seconds)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=PATIENCE) as http, \
            Client(server.url, token, timeout=PATIENCE, retries=0) as client:
        answers: dict[str, object] = {
            "healthz": http.get("/healthz").json(),
            "whoami": http.get("/api/v1/whoami").json(),
            "server version": http.get("/api/v1/version").json(),
        }
        answers["pushed"] = client.push(adapter, "acme/bot", BASE).model_dump(mode="json")
        answers["version"] = client.version("acme/bot@1").model_dump(mode="json")
    return answers


def test_an_upload_that_stalls_gets_408_and_stores_nothing(fresh_db_url: str, tmp_path: Path
                                                           ) -> None:
    with api_server(fresh_db_url, tmp_path, LORAREG_UPLOAD_READ_TIMEOUT_SECONDS="1") as server:
        writer = make_token(fresh_db_url, "writer", "acme", "ci")
        data = slow_payload(1)
        upload = RawUpload(server, writer, data)
        try:
            upload.send(len(data) // 2)  # then nothing
            status, headers, problem = upload.response()
            assert upload.closed_by_server()  # it does not wait for the rest
        finally:
            upload.close()
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert problem["code"] == "request_timeout"
        assert "sent nothing for 1 seconds" in str(problem["detail"])
        assert staged(tmp_path) == []  # discarded before the answer
        assert missing(server, [upload.digest]) == [upload.digest]
        # Bodies that never start stall too; a whole upload afterwards is stored.
        silent = RawUpload(server, writer, data)
        try:
            assert silent.response()[0] == 408
        finally:
            silent.close()
        complete = httpx.put(f"{server.url}/api/v1/blobs/{upload.digest}", content=data,
                             headers={"Authorization": f"Bearer {writer}"}, timeout=PATIENCE)
        assert complete.status_code == 201
        assert missing(server, [upload.digest]) == []


def test_a_token_over_its_upload_cap_gets_429_before_its_body_is_read(
    fresh_db_url: str, tmp_path: Path
) -> None:
    with api_server(fresh_db_url, tmp_path, LORAREG_MAX_CONCURRENT_UPLOADS_PER_TOKEN="2") as server:
        writer = make_token(fresh_db_url, "writer", "acme", "ci")
        other = make_token(fresh_db_url, "writer", "other", "other-ci")
        reader = make_token(fresh_db_url, "reader", "acme", "reader")
        holders = [RawUpload(server, writer, slow_payload(i)) for i in range(2)]
        try:
            for holder in holders:
                holder.send(1)
            wait_for(lambda: len(staged(tmp_path)) == 2, "two uploads in flight")
            third = RawUpload(server, writer, slow_payload(3))
            try:  # no byte of its body is sent: an answer proves none was waited for
                status, headers, problem = third.response()
            finally:
                third.close()
            # Another namespace's token has slots of its own (and cannot free the writer's);
            # a reader may not upload at all; neither changes the writer's uploads.
            data = slow_payload(4)
            other_put = httpx.put(f"{server.url}/api/v1/blobs/{hashlib.sha256(data).hexdigest()}",
                                  content=data, headers={"Authorization": f"Bearer {other}"},
                                  timeout=PATIENCE)
            reader_put = httpx.put(f"{server.url}/api/v1/blobs/{third.digest}",
                                   content=third.data,
                                   headers={"Authorization": f"Bearer {reader}"},
                                   timeout=PATIENCE)
            assert len(staged(tmp_path)) == 2  # the writer's two, still in flight
        finally:
            for holder in holders:
                holder.close()
        assert status == 429
        assert headers["retry-after"] == "5"
        assert problem["code"] == "too_many_requests"
        assert problem["retry_after"] == 5
        assert other_put.status_code == 201
        assert reader_put.status_code == 403
        wait_for(lambda: staged(tmp_path) == [], "the held uploads' staging files to go")
        refused = [third.digest, *(h.digest for h in holders)]
        assert sorted(missing(server, refused)) == sorted(refused)
        # The slots are free again (a moment after the staging files go: retry a 429).
        def stored_again() -> bool:
            again = httpx.put(f"{server.url}/api/v1/blobs/{third.digest}", content=third.data,
                              headers={"Authorization": f"Bearer {writer}"}, timeout=PATIENCE)
            assert again.status_code in (201, 429)
            return again.status_code == 201

        wait_for(stored_again, "the writer's slots to be free again")


def test_the_client_waits_retry_after_and_pushes_once_a_slot_is_free(
    fresh_db_url: str, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name, data in adapter_files(seed=2).items():
        (adapter / name).write_bytes(data)
    with api_server(fresh_db_url, tmp_path, LORAREG_MAX_CONCURRENT_UPLOADS_PER_TOKEN="1") as server:
        writer = make_token(fresh_db_url, "writer", None, "ci")
        holder = RawUpload(server, writer, slow_payload(1))
        waited: list[float] = []
        finished: list[int] = []

        def sleep(seconds: float) -> None:  # the client's back-off: free the slot meanwhile
            waited.append(seconds)
            holder.send(len(holder.data) - holder.sent)
            finished.append(holder.response()[0])  # answered: its slot is free again

        try:
            holder.send(1)
            wait_for(lambda: len(staged(tmp_path)) == 1, "the writer's one upload in flight")
            with Client(server.url, writer, timeout=PATIENCE) as client:
                client.sleep = sleep
                pushed = client.push(adapter, "acme/bot", BASE)
        finally:
            holder.close()
    assert waited == [5.0]  # Retry-After, not the client's own back-off
    assert finished == [201]
    assert pushed.created is True
