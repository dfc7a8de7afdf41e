"""A blob damaged in the store after it was pushed (truncated, or altered in place) makes
``pull`` fail with DigestMismatch (exit 4) naming the file, the digests and the sizes, and
leave nothing behind; never "cannot reach" (exit 6). Against real uvicorn processes, over
the local and the S3 (moto) blob store, proxied and with presigned URLs."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from registry import errors
from registry.blobs import LocalBlobStore, S3BlobStore
from registry.client import Client
from tests.fixtures.adapters import adapter_files
from tests.fixtures.server import BIN, LiveServer, base_env, bootstrap_admin, start_uvicorn

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BASE = "tiny/llama@0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "adapter_model.safetensors"
STORES = ["local", "s3", "s3-presigned"]


@dataclass
class Setup:
    server: LiveServer
    overwrite: Callable[[str, bytes], None]  # replace a stored blob's bytes behind our back
    proxied: bool  # the server streams blob bytes (else it redirects to presigned URLs)


@pytest.fixture(params=STORES)
def setup(request: pytest.FixtureRequest, fresh_db_url: str, tmp_path: Path) -> Iterator[Setup]:
    env = {"LORAREG_MODE": "production", "LORAREG_DATABASE_URL": fresh_db_url}
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
        env["LORAREG_BLOB_URL"] = f"file://{tmp_path / 'blobs'}"

        def overwrite(digest: str, data: bytes) -> None:
            store.path_for(digest).write_bytes(data)
    else:
        s3: S3Client = request.getfixturevalue("s3_client")
        bucket: str = request.getfixturevalue("s3_bucket")
        keys = S3BlobStore(bucket, "lorareg", client=s3)
        env.update(request.getfixturevalue("s3_env"), LORAREG_BLOB_URL=f"s3://{bucket}/lorareg",
                   LORAREG_PRESIGN_DOWNLOADS=str(request.param == "s3-presigned").lower())

        def overwrite(digest: str, data: bytes) -> None:
            s3.put_object(Bucket=bucket, Key=keys.key_for(digest), Body=data)
    token = bootstrap_admin(fresh_db_url)
    server = start_uvicorn(base_env(**env), tmp_path / "server.log")
    server.admin_token = token
    server.env = {**server.env, "LORAREG_URL": server.url, "LORAREG_TOKEN": token,
                  "HOME": str(tmp_path / "home")}
    try:
        yield Setup(server, overwrite, proxied=request.param != "s3-presigned")
    finally:
        server.stop()


def pushed_weights(setup: Setup, tmp_path: Path) -> tuple[str, bytes]:
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, data in adapter_files(seed=3).items():
        (folder / name).write_bytes(data)
    with Client(setup.server.url, setup.server.admin_token) as client:
        client.push(folder, "acme/bot", BASE)
    data = (folder / WEIGHTS).read_bytes()
    return hashlib.sha256(data).hexdigest(), data


def pull(setup: Setup, dest: Path) -> errors.DigestMismatch:
    with Client(setup.server.url, setup.server.admin_token) as client:
        client.sleep = lambda _seconds: None  # retries without waiting
        with pytest.raises(errors.DigestMismatch) as caught:
            client.pull("acme/bot@1", dest)
    return caught.value


def left_behind(dest: Path) -> list[Path]:
    return [*dest.parent.glob(f".{dest.name}.partial-*/{WEIGHTS}"),
            *([dest] if dest.exists() else [])]


def test_pull_of_a_truncated_blob_says_corrupt(setup: Setup, tmp_path: Path) -> None:
    digest, data = pushed_weights(setup, tmp_path)
    kept = len(data) // 2
    setup.overwrite(digest, data[:kept])
    err = pull(setup, tmp_path / "pulled")
    assert err.exit_code == 4
    assert err.detail.startswith(f"{WEIGHTS}: ") and "\n" not in err.detail
    assert digest in err.detail and str(len(data)) in err.detail and str(kept) in err.detail
    assert err.extra["path"] == WEIGHTS and err.extra["expected"] == digest
    assert err.extra["expected_size"] == len(data)
    assert err.extra["stored_size"] == kept
    assert left_behind(tmp_path / "pulled") == []
    if setup.proxied:  # the server streamed it: it tells the operator
        assert f"blob sha256:{digest} is corrupt in the blob store" in setup.server.log.read_text()


def test_pull_of_an_altered_blob_names_both_digests(setup: Setup, tmp_path: Path) -> None:
    digest, data = pushed_weights(setup, tmp_path)
    altered = data[:-1] + bytes([data[-1] ^ 0xFF])
    setup.overwrite(digest, altered)
    err = pull(setup, tmp_path / "pulled")
    actual = hashlib.sha256(altered).hexdigest()
    assert err.exit_code == 4 and err.detail.startswith(f"{WEIGHTS}: ")
    assert digest in err.detail and actual in err.detail
    assert err.extra["expected"] == digest and err.extra["actual"] == actual
    assert left_behind(tmp_path / "pulled") == []


@pytest.mark.parametrize("setup", ["local"], indirect=True)
def test_cli_pull_of_a_truncated_blob_exits_4(setup: Setup, tmp_path: Path) -> None:
    digest, data = pushed_weights(setup, tmp_path)
    setup.overwrite(digest, data[: len(data) // 3])
    done = subprocess.run([str(BIN / "lorareg"), "--retries", "1", "pull", "acme/bot@1",
                           "-o", str(tmp_path / "pulled")], env=setup.server.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 4, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {WEIGHTS}: ") and "corrupt" in line
    assert "cannot reach" not in line
