"""Server processes for the benchmarks: a free port, start and wait, stop, peak RSS."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def peak_rss_mib(self) -> float:
        """VmHWM of the server process (for servers that run the app in it: one worker)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0


def start_server(name: str, cmd: list[str], env: dict[str, str] | None, log: Path, url: str,
                 probe: str, timeout: float = 60) -> Server:
    """Start ``cmd`` (output to ``log``: a file, not a pipe, which would block the server when
    full) and wait until ``url + probe`` answers below 500; stop it if it does not."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(name, url, proc, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + probe, timeout=2).status_code < 500:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f} s:\n"
                                   f"{log.read_text()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise


def moto_cmd(port: int) -> list[str]:
    """moto's S3 server on a loopback port (tests/fixtures/s3.py starts the same for tests)."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
