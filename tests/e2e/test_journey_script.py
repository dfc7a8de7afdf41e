"""examples/journey.sh runs green against the embedded default (it starts its own server)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures.server import ROOT, base_env

pytestmark = pytest.mark.e2e


def test_journey_script_runs_green() -> None:
    env = base_env(PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "examples" / "journey.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "journey complete" in done.stdout
    assert "rollout.aborted" in done.stdout and "rollout.promoted" in done.stdout
