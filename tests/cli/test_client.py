"""registry.client: behaviour against a real uvicorn server, plus pure client logic (folder
walking, retry/backoff, resume arithmetic) with a tiny in-memory transport."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import client as client_mod
from registry import errors
from registry.client import Client, RetryPolicy, iter_folder, parse_retry_after, scan_folder
from registry.client import _http as client_http
from registry.client import _transfer as transfer
from tests.cli.conftest import BASE, variant
from tests.fixtures.server import LiveServer, base_env, bootstrap_admin, start_uvicorn
from tests.fixtures.wire import version_doc

# ----------------------------------------------------------------------------- local files


def test_iter_folder_skips_hidden_and_pycache_and_keeps_readme(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "__pycache__").mkdir()
    for rel in ["README.md", "adapter_config.json", "sub/x.bin", ".git/HEAD", ".DS_Store",
                "__pycache__/m.pyc", "sub/.hidden"]:
        (tmp_path / rel).write_text(rel)
    assert [rel for rel, _ in iter_folder(tmp_path)] == [
        "README.md", "adapter_config.json", "sub/x.bin"]


def test_iter_folder_follows_file_symlinks(tmp_path: Path) -> None:
    blob = tmp_path / "store" / "blob"
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "adapter_model.safetensors").symlink_to(blob)
    (snap / "loop").symlink_to(snap, target_is_directory=True)
    assert [rel for rel, _ in iter_folder(snap)] == ["adapter_model.safetensors"]


def test_scan_folder_hashes_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "CHUNK", 7)
    data = os.urandom(100)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    files = {f.path: f for f in scan_folder(tmp_path)}
    assert files["a.bin"].digest == hashlib.sha256(data).hexdigest()
    assert files["a.bin"].size == 100
    assert files["empty"].digest == hashlib.sha256(b"").hexdigest()


def test_scan_folder_refuses_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(errors.BadRequest, match="not a folder"):
        scan_folder(tmp_path / "nope")
    with pytest.raises(errors.BadRequest, match="no files"):
        scan_folder(tmp_path)


# ----------------------------------------------------------------------- retries (pure logic)


def test_backoff_grows_with_jitter_and_retry_after_wins() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    for attempt, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(20)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1
    assert policy.delay(5, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=3600.0) == client_mod.MAX_RETRY_AFTER


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 30


def _mock_client(handler: Callable[[httpx.Request], httpx.Response],
                 sleeps: list[float], retries: int = 4) -> Client:
    c = Client("http://registry.test", "lrg_x_y", retries=retries,
               transport=httpx.MockTransport(handler))
    c.sleep = sleeps.append
    return c


def _problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": f"https://lorareg.dev/problems/{code}", "title": code, "status": status,
            "detail": detail, "code": code, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def test_get_retries_5xx_and_honours_retry_after() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "3"})
        if len(calls) == 2:
            return httpx.Response(502)
        return httpx.Response(200, json={"version": "9"})

    sleeps: list[float] = []
    assert _mock_client(handler, sleeps).server_version().version == "9"
    assert calls == ["Bearer lrg_x_y"] * 3
    assert sleeps[0] == 3.0 and 0.25 <= sleeps[1] <= 1.0


def test_gives_up_after_retries_with_the_server_problem() -> None:
    sleeps: list[float] = []
    c = _mock_client(lambda _r: _problem(503, "storage_error", "s3 down"), sleeps, retries=2)
    with pytest.raises(errors.StorageError, match="s3 down"):
        c.whoami()
    assert len(sleeps) == 2


def test_non_idempotent_call_is_not_retried_on_5xx_but_is_on_429() -> None:
    statuses = [500, 429, 201]

    def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(statuses.pop(0), json={
            "name": "acme", "description": "", "created_at": "2026-01-01T00:00:00Z"})

    sleeps: list[float] = []
    with pytest.raises(errors.RegistryError) as info:
        _mock_client(handler, sleeps).create_namespace("acme")
    assert info.value.exit_code == 6 and sleeps == []
    assert _mock_client(handler, sleeps).create_namespace("acme").name == "acme"
    assert len(sleeps) == 1


def test_non_problem_error_body_still_maps_by_status() -> None:
    c = _mock_client(lambda _r: httpx.Response(404, text="<html>nope</html>"), [])
    with pytest.raises(errors.NotFound, match="HTTP 404"):
        c.adapter("acme/bot")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_raises_registry_error_after_retries() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    sleeps: list[float] = []
    with Client(url, retries=2, timeout=2) as c:
        c.sleep = sleeps.append
        with pytest.raises(errors.RegistryError) as info:
            c.health()
    assert type(info.value) is errors.RegistryError
    assert info.value.exit_code == 6
    assert info.value.detail.startswith(f"cannot reach {url}: ")
    assert len(sleeps) == 2


def test_local_ref_errors_before_any_request() -> None:
    c = _mock_client(lambda _r: pytest.fail("no request expected"), [])
    with pytest.raises(errors.BadRequest):
        c.version("not-a-ref")
    with pytest.raises(errors.BadRequest, match="explicit version"):
        c.yank("acme/bot@latest", "bad")
    with pytest.raises(errors.BadRequest, match="HUB_ID@REVISION"):
        c.push(".", "acme/bot", base="no-revision")


# -------------------------------------------------------------- upload retry and progress


def test_retried_upload_takes_back_progress(tmp_path: Path) -> None:
    data = os.urandom(3000)
    (tmp_path / "w.bin").write_bytes(data)
    (file,) = scan_folder(tmp_path)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        assert request.headers["content-length"] == "3000"
        if len(bodies) == 1:
            return httpx.Response(503)
        return httpx.Response(201, json={"digest": file.digest, "size": 3000})

    increments: list[int] = []
    c = _mock_client(handler, [])
    assert c.upload_blob(file, increments.append).size == 3000
    assert bodies == [data, data]
    assert sum(increments) == 3000 and -3000 in increments


class FakeBar:
    """What the CLI passes: a tqdm-like bar."""

    def __init__(self) -> None:
        self.total: float | None = None
        self.n = 0.0

    def update(self, n: float | None = 1) -> bool | None:
        self.n += n or 0
        return None

    def reset(self, total: float | None = None) -> None:
        self.total, self.n = total, 0


# ------------------------------------------------------------------- resume (pure logic)


class BlobServer:
    """An in-memory stand-in answering version and blob GETs, with Range support."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True,
                 corrupt: str | None = None) -> None:
        self.blobs = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
        self.files = files
        self.honour_range = honour_range
        self.corrupt = corrupt
        self.ranges: list[str | None] = []

    def version(self) -> dict[str, Any]:
        entries = [{"path": p, "digest": hashlib.sha256(d).hexdigest(), "size": len(d)}
                   for p, d in self.files.items()]
        return version_doc(entries, total_size=0)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/versions/" in request.url.path:
            return httpx.Response(200, json=self.version())
        digest = request.url.path.rsplit("/", 1)[1]
        data = self.blobs[digest]
        if digest == self.corrupt:
            data = b"X" + data[1:]
        self.ranges.append(request.headers.get("range"))
        rng = request.headers.get("range")
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return httpx.Response(206, content=data[start:], headers={
                "content-range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        return httpx.Response(200, content=data)


def _partial_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial-{'ab' * 6}"


@pytest.mark.parametrize("honour_range", [True, False])
def test_pull_resumes_a_partial_file(tmp_path: Path, honour_range: bool) -> None:
    big, small = os.urandom(5000), b'{"r": 4}'
    server = BlobServer({"w.bin": big, "cfg.json": small}, honour_range=honour_range)
    dest = tmp_path / "out"
    partial = _partial_dir(dest)
    partial.mkdir()
    (partial / "cfg.json").write_bytes(small)          # complete and right: kept
    (partial / "w.bin").write_bytes(big[:1200])        # interrupted: resumed
    (partial / "stale.tmp").write_bytes(b"left over")  # not in the manifest: removed
    bar = FakeBar()
    result = _mock_client(server, []).pull("acme/bot@1", dest, progress=bar)
    assert (dest / "w.bin").read_bytes() == big
    assert sorted(p.name for p in dest.iterdir()) == ["cfg.json", "w.bin"]
    assert not partial.exists()
    assert server.ranges == ["bytes=1200-"]
    assert result.downloaded_bytes == (3800 if honour_range else 5000)
    assert bar.total == len(big) + len(small) and bar.n == bar.total


class DroppingStream(httpx.SyncByteStream):
    """A body that breaks off after ``cut`` bytes, like a dropped connection."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.data[: self.cut]
        raise httpx.ReadError("connection reset by peer")


def test_pull_resumes_after_the_connection_drops_mid_file(tmp_path: Path) -> None:
    data = os.urandom(4096)
    server = BlobServer({"w.bin": data})
    first_blob_get = True

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal first_blob_get
        if "/blobs/" in request.url.path and first_blob_get:
            first_blob_get = False
            server.ranges.append(request.headers.get("range"))
            return httpx.Response(200, stream=DroppingStream(data, 1000))
        return server(request)

    sleeps: list[float] = []
    result = _mock_client(handler, sleeps).pull("acme/bot@1", tmp_path / "out")
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
    assert server.ranges == [None, "bytes=1000-"]
    assert result.downloaded_bytes == 4096 and len(sleeps) == 1


def test_pull_replaces_a_wrong_complete_file(tmp_path: Path) -> None:
    data = os.urandom(64)
    server = BlobServer({"w.bin": data})
    dest = tmp_path / "out"
    _partial_dir(dest).mkdir()
    (_partial_dir(dest) / "w.bin").write_bytes(os.urandom(64))
    _mock_client(server, []).pull("acme/bot@1", dest)
    assert (dest / "w.bin").read_bytes() == data
    assert server.ranges == [None]


def test_pull_digest_mismatch_leaves_no_corrupt_file(tmp_path: Path) -> None:
    data = os.urandom(64)
    server = BlobServer({"w.bin": data}, corrupt=hashlib.sha256(data).hexdigest())
    dest = tmp_path / "out"
    with pytest.raises(errors.DigestMismatch, match=r"w\.bin") as info:
        _mock_client(server, []).pull("acme/bot@1", dest)
    assert info.value.exit_code == 4
    assert not dest.exists()
    assert not (_partial_dir(dest) / "w.bin").exists()


def test_pull_refuses_paths_escaping_the_folder(tmp_path: Path) -> None:
    server = BlobServer({"../evil": b"x"})
    with pytest.raises(errors.InvalidPath):
        _mock_client(server, []).pull("acme/bot@1", tmp_path / "out")
    assert not (tmp_path / "evil").exists()


# ------------------------------------------------------------------------ the real server


def test_service_endpoints(client: Client) -> None:
    assert client.health().status
    assert client.server_version().version
    assert client.whoami().role == "admin"


def test_push_uploads_missing_blobs_then_nothing(client: Client, adapter_dir: Path) -> None:
    total = sum(f.stat().st_size for f in adapter_dir.iterdir())
    bar = FakeBar()
    first = client.push(adapter_dir, "acme/bot", BASE, metrics={"accuracy": 0.9},
                        labels={"task": "qa"}, provenance={"git_commit": "abc123"},
                        description="demo", progress=bar)
    assert first.created is True and first.ref == "acme/bot@1"
    assert first.uploaded_bytes == total == bar.total == bar.n
    assert sorted(f.path for f in first.files) == sorted(
        p.name for p in adapter_dir.iterdir())
    assert first.metrics == {"accuracy": 0.9}
    assert first.labels == {"task": "qa"}
    assert first.provenance["git_commit"] == "abc123"

    again = client.push(adapter_dir, "acme/bot", BASE)
    assert again.created is False
    assert again.uploaded_bytes == 0 and again.uploaded_digests == []
    assert again.version == 1
    assert again.manifest_digest == first.manifest_digest


def test_push_of_changed_folder_uploads_only_the_new_file(
    client: Client, adapter_dir: Path,
) -> None:
    client.push(adapter_dir, "acme/bot", BASE)
    second = client.push(variant(adapter_dir, "b"), "acme/bot", BASE)
    assert second.created is True and second.version == 2
    notes = hashlib.sha256((adapter_dir / "notes.txt").read_bytes()).hexdigest()
    assert second.uploaded_digests == [notes]


def test_pull_roundtrip_is_verified_and_atomic(
    client: Client, adapter_dir: Path, tmp_path: Path,
) -> None:
    (adapter_dir / "sub").mkdir()
    (adapter_dir / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    pushed = client.push(adapter_dir, "acme/bot", BASE)
    dest = tmp_path / "pulled"
    bar = FakeBar()
    pulled = client.pull("acme/bot@latest", dest, progress=bar)
    assert pulled.version == pushed.version
    assert pulled.downloaded_bytes == pushed.total_size == bar.total == bar.n
    for rel, src in iter_folder(adapter_dir):
        assert (dest / rel).read_bytes() == src.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pull_resumes_from_an_interrupted_download(
    client: Client, adapter_dir: Path, tmp_path: Path,
) -> None:
    pushed = client.push(adapter_dir, "acme/bot", BASE)
    dest = tmp_path / "pulled"
    partial = tmp_path / f".pulled.partial-{pushed.manifest_digest[:12]}"
    partial.mkdir()
    weights = (adapter_dir / "adapter_model.safetensors").read_bytes()
    (partial / "adapter_model.safetensors").write_bytes(weights[:1000])
    config = (adapter_dir / "adapter_config.json").read_bytes()
    (partial / "adapter_config.json").write_bytes(config)
    pulled = client.pull("acme/bot@1", dest)
    assert (dest / "adapter_model.safetensors").read_bytes() == weights
    assert pulled.downloaded_bytes == pushed.total_size - 1000 - len(config)
    assert not partial.exists()


def test_pull_into_existing_folder_needs_overwrite(
    client: Client, adapter_dir: Path, tmp_path: Path,
) -> None:
    client.push(adapter_dir, "acme/bot", BASE)
    dest = tmp_path / "pulled"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(errors.Conflict, match="already exists"):
        client.pull("acme/bot", dest)
    assert (dest / "old.txt").exists()
    client.pull("acme/bot", dest, overwrite=True)
    assert not (dest / "old.txt").exists()
    assert (dest / "adapter_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_server_errors_arrive_as_registry_errors(
    client: Client, live_server: LiveServer, adapter_dir: Path,
) -> None:
    with pytest.raises(errors.NotFound) as not_found:
        client.version("acme/ghost@1")
    assert not_found.value.exit_code == 2
    client.push(adapter_dir, "acme/bot", BASE)
    client.yank("acme/bot@1", "broken tokenizer")
    with pytest.raises(errors.Conflict):
        client.yank("acme/bot@1", "again")
    with Client(live_server.url, "lrg_nope_nope") as bad, pytest.raises(errors.Unauthenticated):
        bad.whoami()


def test_lists_follow_cursors(
    client: Client, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for tag in "abc":
        client.push(variant(adapter_dir, tag), "acme/bot", BASE,
                    metrics={"accuracy": {"a": 0.5, "b": 0.9, "c": 0.7}[tag]})
    client.push(adapter_dir, "other/bot", BASE)
    monkeypatch.setattr(client_http, "PAGE_SIZE", 1)
    assert [v.version for v in client.versions("acme/bot")] == [3, 2, 1]
    assert [v.version for v in client.versions("acme/bot", limit=2)] == [3, 2]
    assert [v.version for v in client.versions(
        "acme/bot", metric_filters=["accuracy>=0.7"], sort="metric.accuracy", order="desc",
    )] == [2, 3]
    assert {a.name for a in client.adapters()} == {"acme/bot", "other/bot"}
    assert [a.name for a in client.adapters(namespace="other")] == ["other/bot"]
    assert {v.adapter for v in client.versions(namespace="acme")} == {"acme/bot"}
    assert {n.name for n in client.namespaces()} >= {"acme", "other"}


def test_adapter_labels_and_description(client: Client, adapter_dir: Path) -> None:
    client.push(adapter_dir, "acme/bot", BASE)
    updated = client.update_adapter("acme/bot", description="support bot",
                                    labels={"team": "nlp", "tier": "1"})
    assert updated.labels == {"team": "nlp", "tier": "1"}
    updated = client.update_adapter("acme/bot", remove_labels=["tier"])
    assert updated.labels == {"team": "nlp"}
    assert client.adapter("acme/bot").description == "support bot"
    assert [a.name for a in client.adapters(label={"team": "nlp"})] == ["acme/bot"]
    assert list(client.adapters(label=["team=cv"])) == []


def test_metrics_log_and_history(client: Client, adapter_dir: Path) -> None:
    client.push(adapter_dir, "acme/bot", BASE, metrics=[{"key": "loss", "value": 2.0}])
    client.log_metrics("acme/bot@1", {"loss": 1.5, "bleu": 30.0}, dataset="wmt", split="test")
    history = client.metric_history("acme/bot")
    assert [(m.key, m.value) for m in history] == [
        ("loss", 2.0), ("loss", 1.5), ("bleu", 30.0)]
    assert {m.dataset for m in history if m.value != 2.0} == {"wmt"}
    assert client.version("acme/bot@1").metrics == {"loss": 1.5, "bleu": 30.0}


def test_yank_moves_latest_and_unyank_restores(client: Client, adapter_dir: Path) -> None:
    client.push(adapter_dir, "acme/bot", BASE)
    client.push(variant(adapter_dir, "b"), "acme/bot", BASE)
    yanked = client.yank("acme/bot@2", "regression")
    assert yanked.status == "yanked" and yanked.yank_reason == "regression"
    assert client.version("acme/bot@latest").version == 1
    assert client.version("acme/bot@2").status == "yanked"
    assert client.unyank("acme/bot@2").status == "active"
    assert client.version("acme/bot").version == 2


def test_tokens_roles_and_revocation(
    client: Client, live_server: LiveServer, adapter_dir: Path,
) -> None:
    created = client.create_token("ci-reader", "reader", namespace="acme", expires_in_days=7)
    assert (created.token or "").startswith("lrg_") and created.namespace == "acme"
    listed = {t.id: t for t in client.tokens()}
    assert listed[created.id].token is None
    with Client(live_server.url, created.token) as reader:
        assert reader.whoami().role == "reader"
        with pytest.raises(errors.PermissionDenied) as denied:
            reader.push(adapter_dir, "acme/bot", BASE)
        assert denied.value.exit_code == 5
        client.revoke_token(created.id)
        with pytest.raises(errors.Unauthenticated):
            reader.whoami()


def test_audit_records_pushes_and_yanks(client: Client, adapter_dir: Path) -> None:
    client.push(adapter_dir, "acme/bot", BASE)
    client.yank("acme/bot@1", "bad")
    actions = [e.action for e in client.audit(namespace="acme")]
    assert "version.pushed" in actions and "version.yanked" in actions
    assert [e.action for e in client.audit(target="acme/bot@1", action="version.yanked")] == [
        "version.yanked"]
    assert len(list(client.audit(limit=1))) == 1


def test_bases_list_is_empty_until_registered(client: Client) -> None:
    assert client.bases() == []
    with pytest.raises(errors.NotFound):
        client.base(12345)


@pytest.fixture
def presigning_server(
    fresh_db_url: str, tmp_path: Path, s3_env: dict[str, str], s3_bucket: str,
) -> Iterator[LiveServer]:
    """uvicorn storing blobs in the moto S3 server and answering downloads with 307s to
    presigned URLs."""
    token = bootstrap_admin(fresh_db_url)
    env = base_env(LORAREG_MODE="production", LORAREG_DATABASE_URL=fresh_db_url,
                   LORAREG_BLOB_URL=f"s3://{s3_bucket}/lorareg",
                   LORAREG_PRESIGN_DOWNLOADS="true", **s3_env)
    server = start_uvicorn(env, tmp_path / "server.log")
    server.admin_token = token
    try:
        yield server
    finally:
        server.stop()


def test_pull_follows_presigned_redirects_and_resumes_there(
    presigning_server: LiveServer, adapter_dir: Path, tmp_path: Path,
) -> None:
    with Client(presigning_server.url, presigning_server.admin_token) as c:
        pushed = c.push(adapter_dir, "acme/bot", BASE)
        weights = pushed.files[[f.path for f in pushed.files].index(
            "adapter_model.safetensors")]
        raw = httpx.get(f"{presigning_server.url}/api/v1/blobs/{weights.digest}",
                        headers={"Authorization": f"Bearer {presigning_server.admin_token}"})
        assert raw.status_code == 307
        assert not raw.headers["location"].startswith(presigning_server.url)

        partial = tmp_path / f".pulled.partial-{pushed.manifest_digest[:12]}"
        partial.mkdir()
        data = (adapter_dir / "adapter_model.safetensors").read_bytes()
        (partial / "adapter_model.safetensors").write_bytes(data[:777])
        pulled = c.pull("acme/bot@1", tmp_path / "pulled")
    assert pulled.downloaded_bytes == pushed.total_size - 777
    for rel, src in iter_folder(adapter_dir):
        assert (tmp_path / "pulled" / rel).read_bytes() == src.read_bytes()


def test_readme_python_client_example_runs(live_server: LiveServer, adapter_dir: Path,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python client snippet, as written, against a real server."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("## Python client", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8080" in code and "org/base@<commit>" in code
    code = code.replace("http://127.0.0.1:8080", live_server.url).replace(
        "org/base@<commit>", BASE)
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "adapter").symlink_to(adapter_dir)
    monkeypatch.chdir(work)
    namespace: dict[str, Any] = {"token": live_server.admin_token}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert [v.ref for v in namespace["good"]] == ["acme/support-bot@1"]
    assert sorted(p.name for p in (work / "adapter").iterdir()) == sorted(
        p.name for p in adapter_dir.iterdir())
    assert "2 version acme/support-bot@99 not found" in capsys.readouterr().out
