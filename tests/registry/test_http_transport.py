"""Blob downloads through registry.client._transport (urllib3 under httpx) against a real HTTP
server on a socket: bodies cut short resume with a Range request, a redirect to another host
does not carry the token, stalls time out, error answers become RegistryErrors, connections are
reused after a complete body and never after a partial one."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import errors
from registry.client import Client
from registry.client._transport import READ_SIZE, URLLib3Transport
from tests.fixtures.wire import version_doc

MIB = 1024 * 1024


class Blobs(ThreadingHTTPServer):
    """Serves one version and its blob; the first ``len(cuts)`` blob answers stop after
    ``cut`` bytes of the body (the connection is closed), ``stall`` answers send their
    headers and then nothing, ``redirect_to`` makes blob GETs answer 307 to another server."""

    daemon_threads = True

    def __init__(self, data: bytes) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest()
        self.cuts: list[int] = []
        self.stall = 0
        self.redirect_to: str | None = None
        self.missing = False
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def version(self) -> dict[str, Any]:
        files = [{"path": "w.bin", "digest": self.digest, "size": len(self.data)}]
        return version_doc(files)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Blobs

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "authorization": self.headers.get("Authorization")})
        if "/versions/" in self.path:
            self._send(200, json.dumps(srv.version()).encode(), "application/json")
        elif srv.missing:
            problem = {"title": "Not Found", "status": 404, "code": "not_found",
                       "detail": "no such blob"}
            self._send(404, json.dumps(problem).encode(), "application/problem+json")
        elif srv.redirect_to is not None:
            self.send_response(307)
            self.send_header("Location", f"{srv.redirect_to}/presigned{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._blob()

    def _blob(self) -> None:
        srv, rng = self.server, self.headers.get("Range")
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        body = srv.data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(srv.data) - 1}/{len(srv.data)}")
        self.end_headers()
        if srv.stall:
            srv.stall -= 1
            time.sleep(2)
            self.close_connection = True
            return
        if srv.cuts:
            self.wfile.write(body[:srv.cuts.pop(0) - start])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(data: bytes) -> Iterator[Blobs]:
    server = Blobs(data)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def blobs() -> Iterator[Blobs]:
    yield from serve(os.urandom(3 * READ_SIZE + 12345))


def client(server: Blobs, **kwargs: Any) -> Client:
    c = Client(server.url, "lrg_x_y", **kwargs)
    c.sleep = lambda _seconds: None
    return c


def blob_requests(server: Blobs) -> list[dict[str, Any]]:
    return [r for r in server.requests if "/blobs/" in r["path"]]


def test_client_uses_the_urllib3_transport_for_blob_bodies_only(blobs: Blobs) -> None:
    with client(blobs) as c:
        assert isinstance(c._http.blobs._transport, URLLib3Transport)
        assert not isinstance(c._http.api._transport, URLLib3Transport)


def test_pull_and_keep_alive(blobs: Blobs, tmp_path: Path) -> None:
    with client(blobs) as c:
        c.pull("acme/bot@1", tmp_path / "a")
        c.pull("acme/bot@1", tmp_path / "b")
    assert (tmp_path / "a" / "w.bin").read_bytes() == blobs.data
    assert (tmp_path / "b" / "w.bin").read_bytes() == blobs.data
    assert [r["authorization"] for r in blob_requests(blobs)] == ["Bearer lrg_x_y"] * 2
    # One connection for the version GETs (httpx), one for both blob bodies (urllib3).
    assert blobs.connections == 2


def test_bodies_cut_short_resume_at_the_bytes_on_disk(blobs: Blobs, tmp_path: Path) -> None:
    cuts = [READ_SIZE // 2, 2 * READ_SIZE + 7]  # inside the first read, then a later one
    blobs.cuts = list(cuts)
    heard: list[int] = []
    with client(blobs) as c:
        result = c.pull("acme/bot@1", tmp_path / "out", progress=heard.append)
    assert (tmp_path / "out" / "w.bin").read_bytes() == blobs.data
    assert [r["range"] for r in blob_requests(blobs)] == [None, f"bytes={cuts[0]}-",
                                                          f"bytes={cuts[1]}-"]
    assert result.downloaded_bytes == len(blobs.data) and sum(heard) == len(blobs.data)
    # A connection whose body was cut is never reused.
    assert blobs.connections == 1 + 3


def test_too_many_cuts_give_a_network_error_and_keep_the_partial_file(
    blobs: Blobs, tmp_path: Path
) -> None:
    blobs.cuts = [100, 200, 300]
    with client(blobs, retries=2) as c, pytest.raises(errors.RegistryError) as err:
        c.pull("acme/bot@1", tmp_path / "out")
    assert err.value.exit_code == 6 and "cannot reach" in str(err.value)
    assert not (tmp_path / "out").exists()
    (partial,) = tmp_path.glob(".out.partial-*/w.bin")
    assert partial.read_bytes() == blobs.data[:300]
    with client(blobs) as c:  # the next pull continues from there
        c.pull("acme/bot@1", tmp_path / "out")
    assert (tmp_path / "out" / "w.bin").read_bytes() == blobs.data
    assert blob_requests(blobs)[-1]["range"] == "bytes=300-"


def test_a_stalled_body_times_out_and_resumes(blobs: Blobs, tmp_path: Path) -> None:
    blobs.stall = 1
    with client(blobs, timeout=0.5) as c:
        c.pull("acme/bot@1", tmp_path / "out")
    assert (tmp_path / "out" / "w.bin").read_bytes() == blobs.data
    assert len(blob_requests(blobs)) == 2


def test_redirect_to_another_host_drops_the_token(blobs: Blobs, tmp_path: Path) -> None:
    for storage in serve(blobs.data):
        blobs.redirect_to = storage.url
        with client(blobs) as c:
            c.pull("acme/bot@1", tmp_path / "out")
        assert (tmp_path / "out" / "w.bin").read_bytes() == blobs.data
        (presigned,) = blob_requests(storage)
        assert presigned["path"].startswith("/presigned/api/v1/blobs/")
        assert presigned["authorization"] is None


def test_error_answer_becomes_the_registry_error(blobs: Blobs, tmp_path: Path) -> None:
    blobs.missing = True
    with client(blobs) as c, pytest.raises(errors.NotFound, match="no such blob"):
        c.pull("acme/bot@1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_transport_errors_are_httpx_errors() -> None:
    with (URLLib3Transport() as transport, httpx.Client(transport=transport) as http,
          pytest.raises(httpx.ConnectError)):  # nothing listens on port 9 (discard)
        http.get("http://127.0.0.1:9/")


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 signed by it: (ca, cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_pull_over_tls_verifies_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Over HTTPS the blob body is verified like every other call: against the CA httpx
    trusts (here SSL_CERT_FILE), and refused with a connect error when it is unknown."""
    import ssl

    ca, cert, key = make_tls_files(tmp_path)
    for server in serve(os.urandom(2 * READ_SIZE + 3)):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        url = f"https://localhost:{server.server_address[1]}"
        with URLLib3Transport() as transport, httpx.Client(transport=transport) as http, \
                pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            http.get(f"{url}/api/v1/blobs/{server.digest}")  # certifi's CAs: not ours
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with Client(url, "lrg_x_y") as c:
            c.pull("acme/bot@1", tmp_path / "out")
        assert (tmp_path / "out" / "w.bin").read_bytes() == server.data
        assert len(blob_requests(server)) == 1  # the refused one never got past the handshake
