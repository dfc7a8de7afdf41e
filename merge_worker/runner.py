"""Running workers: :func:`start_workers` (job threads and one controller thread sharing one
engine and blob store, for ``python -m merge_worker`` and the embedded ``lorareg serve``) and
:func:`main`, the worker process (``python -m merge_worker``, ``lorareg worker``) that runs
them until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import timedelta
from types import FrameType

from merge_worker.handlers import HANDLERS
from merge_worker.worker import Worker, default_worker_id
from registry.blobs import open_blob_store
from registry.config import get_settings
from registry.db import make_engine, make_session_factory
from registry.logs import configure_logging


def start_workers(count: int, stopping: threading.Event) -> list[threading.Thread]:
    """Start ``count`` worker threads sharing one engine and blob store."""
    settings = get_settings()
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    store = open_blob_store(settings)
    # One more thread ticks the rollout controller and delivers webhooks, so a long merge in
    # every job thread never stalls rollouts, their deadlines or events.
    controller = Worker(settings, sessions, store, {}, worker_id=f"{default_worker_id()}-ctl",
                        stopping=stopping, poll_seconds=settings.worker_poll_seconds)
    threads = [threading.Thread(target=controller.run, name="controller", daemon=True)]
    threads[0].start()
    for i in range(count):
        worker = Worker(settings, sessions, store, HANDLERS,
                        worker_id=f"{default_worker_id()}-{i}", stopping=stopping,
                        lease=timedelta(seconds=settings.worker_lease_seconds),
                        poll_seconds=settings.worker_poll_seconds)
        thread = threading.Thread(target=worker.run, name=f"worker-{i}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m merge_worker")
    parser.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_format)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("lorareg.worker").info("signal %s: releasing jobs and stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = start_workers(args.workers, stopping)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)

