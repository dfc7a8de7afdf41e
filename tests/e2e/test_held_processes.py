"""What held in the security pass stays held (issue 15), with real processes on PostgreSQL:
64 concurrent pushes spread over two API processes get versions 1..64 with no gap or
duplicate; killing every database connection of a loaded API process
(``pg_terminate_backend``) is recovered from without a restart; an API process SIGKILLed
mid-upload leaves nothing visible."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from registry.client import Client
from tests.fixtures.adapters import adapter_files
from tests.fixtures.server import LiveServer, base_env, bootstrap_admin, start_uvicorn
from tests.fixtures.workers import wait_until

pytestmark = pytest.mark.e2e
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture
def two_apis(pg_databases: object, request: pytest.FixtureRequest, tmp_path: Path
             ) -> Iterator[tuple[list[LiveServer], str, str]]:
    url: str = request.getfixturevalue("pg_databases").fresh()
    token = bootstrap_admin(url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=url,
                   LORAREG_BLOB_URL=f"file://{tmp_path / 'blobs'}")
    apis = [start_uvicorn(env, tmp_path / f"api-{i}.log") for i in range(2)]
    try:
        yield apis, token, url.rsplit("/", 1)[1]
    finally:
        for api in apis:
            api.stop()


def folder(root: Path, seed: int) -> Path:
    path = root / f"adapter-{seed}"
    path.mkdir()
    for name, data in adapter_files(seed=seed).items():
        (path / name).write_bytes(data)
    return path


def test_64_concurrent_pushes_over_two_processes_get_1_to_64(
    two_apis: tuple[list[LiveServer], str, str], tmp_path: Path
) -> None:
    apis, token, _ = two_apis
    folders = [folder(tmp_path, seed) for seed in range(64)]

    def push(i: int) -> int:
        with Client(apis[i % 2].url, token, timeout=120) as client:
            return int(client.push(str(folders[i]), "acme/bot", base="tiny/llama@abc").version)

    with ThreadPoolExecutor(max_workers=64) as pool:
        numbers = list(pool.map(push, range(64)))
    assert sorted(numbers) == list(range(1, 65))


def test_killed_database_connections_are_recovered_without_a_restart(
    two_apis: tuple[list[LiveServer], str, str]
) -> None:
    apis, token, dbname = two_apis
    api = apis[0]
    auth = {"Authorization": f"Bearer {token}"}
    stop, answers, killed = threading.Event(), [], 0

    def load() -> None:
        with httpx.Client(base_url=api.url, headers=auth, timeout=30) as http:
            while not stop.is_set():
                answers.append(http.get("/api/v1/adapters").status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for _ in range(3):
                wait_until(lambda: answers[-10:] == [200] * 10, timeout=60)
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()
                killed += int(row[0]) if row else 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert killed >= 1
    assert api.proc.poll() is None  # the same process, never restarted
    with httpx.Client(base_url=api.url, headers=auth, timeout=30) as http:
        after = [http.get("/api/v1/adapters").status_code for _ in range(20)]
    assert after == [200] * 20
    assert set(answers) <= {200, 500, 503}, set(answers)


def test_an_api_killed_mid_upload_leaves_nothing_visible(
    two_apis: tuple[list[LiveServer], str, str], tmp_path: Path
) -> None:
    apis, token, _ = two_apis
    victim, survivor = apis
    data = b"weights" * 200_000
    digest = hashlib.sha256(data).hexdigest()
    url = urlsplit(victim.url)
    head = (f"PUT /api/v1/blobs/{digest} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n")
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head.encode() + data[: len(data) // 2])
        time.sleep(0.5)  # let the server stage what it got
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
    auth = {"Authorization": f"Bearer {token}"}
    missing = httpx.post(f"{survivor.url}/api/v1/blobs/missing", headers=auth,
                         json={"digests": [digest]}, timeout=10).json()["missing"]
    assert missing == [digest]
    assert httpx.get(f"{survivor.url}/api/v1/blobs/{digest}", headers=auth,
                     timeout=10).status_code == 404
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()
                and p.name == digest]
    ok = httpx.put(f"{survivor.url}/api/v1/blobs/{digest}", headers=auth, content=data,
                   timeout=30)
    assert ok.status_code == 201
