"""Settings are checked at start-up: a bad value stops ``lorareg serve`` and the production
entry point with one line naming the variable, never a server that starts and then fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from registry.config import Settings, get_settings
from registry.errors import BadRequest
from tests.fixtures.s3 import free_port
from tests.fixtures.server import BIN, ROOT, base_env

SEVEN_DAYS = 604800  # the longest S3 signs for
# A server that starts anyway is stopped after this long (the test then fails): refusing
# takes about as long as importing the app.
START_LIMIT = 60


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("ttl", [-300, 0, SEVEN_DAYS + 1])
def test_presign_ttl_out_of_range_is_refused(ttl: int) -> None:
    with pytest.raises(ValidationError, match="presign_ttl_seconds"):
        Settings(presign_ttl_seconds=ttl)


@pytest.mark.parametrize("ttl", [1, 300, SEVEN_DAYS])
def test_presign_ttl_within_range_is_accepted(ttl: int) -> None:
    assert Settings(presign_ttl_seconds=ttl).presign_ttl_seconds == ttl


def test_settings_from_the_environment_fail_with_one_line(
    monkeypatch: pytest.MonkeyPatch, fresh_settings: None,
) -> None:
    monkeypatch.setenv("LORAREG_PRESIGN_TTL_SECONDS", "-5")
    monkeypatch.setenv("LORAREG_MODE", "staging")
    with pytest.raises(BadRequest) as caught:
        get_settings()
    detail = caught.value.detail
    assert "\n" not in detail and caught.value.exit_code == 4
    assert "LORAREG_PRESIGN_TTL_SECONDS: Input should be greater than 0" in detail
    assert "LORAREG_MODE" in detail


def run_refused(cmd: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = base_env(LORAREG_HOME=str(tmp_path / ".lorareg"), HOME=str(tmp_path), **env)
    return subprocess.run(cmd, env=environment, cwd=ROOT, capture_output=True, text=True,
                          timeout=START_LIMIT, check=False)


@pytest.mark.parametrize("ttl", ["-1", "0", "604801"])
def test_lorareg_serve_refuses_a_bad_presign_ttl(tmp_path: Path, ttl: str) -> None:
    done = run_refused([str(BIN / "lorareg"), "serve", "--port", str(free_port()),
                        "--workers", "0"], tmp_path, LORAREG_PRESIGN_TTL_SECONDS=ttl)
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: invalid settings: "), lines
    assert "LORAREG_PRESIGN_TTL_SECONDS" in lines[0]
    assert not (tmp_path / ".lorareg").exists()  # refused before touching anything


def test_production_entry_point_refuses_a_bad_presign_ttl(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "uvicorn", "registry.api.app:factory", "--factory",
           "--host", "127.0.0.1", "--port", str(free_port())]
    done = run_refused(cmd, tmp_path, LORAREG_MODE="production",
                       LORAREG_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
                       LORAREG_PRESIGN_TTL_SECONDS="-60")
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "LORAREG_PRESIGN_TTL_SECONDS" in errors[0], done.stderr
