"""Python SDK over the lorareg REST API (synchronous, httpx).

Usage::

    with Client("http://127.0.0.1:8080", token) as registry:
        v = registry.push("out/adapter", "acme/support-bot", base="org/base@<commit>")
        registry.pull("acme/support-bot@latest", Path("adapter"))

Everything public is exported here; the modules behind it are private (``_transport``: blob
bodies over urllib3; ``_retry``: backoff; ``_transfer``: local files, progress and the verified
resumable download; one module per resource family).
"""

from __future__ import annotations

from registry.client._channels import channel_ref, explicit_version
from registry.client._client import Client, body_chunks, metric_rows
from registry.client._jobs import FINAL_STATUSES, job_error
from registry.client._retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after
from registry.client._transfer import (
    CHUNK,
    LocalFile,
    Progress,
    ProgressBar,
    iter_folder,
    scan_folder,
    sha256_file,
)

__all__ = [
    "CHUNK",
    "FINAL_STATUSES",
    "MAX_RETRY_AFTER",
    "Client",
    "LocalFile",
    "Progress",
    "ProgressBar",
    "RetryPolicy",
    "body_chunks",
    "channel_ref",
    "explicit_version",
    "iter_folder",
    "job_error",
    "metric_rows",
    "parse_retry_after",
    "scan_folder",
    "sha256_file",
]
