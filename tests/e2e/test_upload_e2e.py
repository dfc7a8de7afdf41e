"""Uploads cut off mid-body against a real uvicorn process: nothing becomes visible."""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e


def test_truncated_upload_stores_nothing(live_server: LiveServer) -> None:
    data = b"weights" * 20000
    digest = hashlib.sha256(data).hexdigest()
    url = urlsplit(live_server.url)
    head = (f"PUT /api/v1/blobs/{digest} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {live_server.admin_token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n")
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head.encode() + data[: len(data) // 3])  # the client dies mid-body
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    missing = httpx.post(f"{live_server.url}/api/v1/blobs/missing", headers=headers,
                         json={"digests": [digest]}, timeout=10).json()["missing"]
    assert missing == [digest]
    assert httpx.get(f"{live_server.url}/api/v1/blobs/{digest}", headers=headers,
                     timeout=10).status_code == 404
    # The same upload, complete, succeeds afterwards.
    ok = httpx.put(f"{live_server.url}/api/v1/blobs/{digest}", headers=headers, content=data,
                   timeout=30)
    assert ok.status_code == 201
