"""Settings: the one place that reads ``LORAREG_*`` environment variables.

Every variable is listed in the README's configuration table. Values are checked at start-up
(:meth:`Settings.check_production`) and insecure combinations are refused loudly outside the
embedded development mode.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.errors import BadRequest
from registry.safetensors_io import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_TENSORS,
    MAX_HEADER_LEN,
    HeaderLimits,
)

MAX_PRESIGN_TTL = 7 * 24 * 3600


class Settings(BaseSettings):
    """Typed settings; each field is ``LORAREG_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LORAREG_", extra="ignore")

    mode: Literal["embedded", "production"] = Field(
        "embedded", description="embedded: single user, SQLite + local blobs by default"
    )
    home: Path = Field(Path(".lorareg"), description="state folder for the embedded default")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<home>/lorareg.db"
    )
    blob_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default <home>/blobs"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, R2, Ceph, moto)")
    s3_region: str | None = Field(None, description="S3 region name")
    s3_public_endpoint_url: str | None = Field(
        None, description="S3 endpoint as clients reach it, for presigned URLs (default: "
        "s3_endpoint_url)"
    )
    s3_multipart_threshold: int = Field(
        16 * 1024 * 1024, description="objects at least this big upload as S3 multipart"
    )
    s3_part_size: int = Field(16 * 1024 * 1024, description="S3 multipart part size in bytes")
    presign_downloads: bool = Field(
        False, description="hand out presigned S3 URLs instead of proxying blob bytes"
    )
    # S3 refuses to sign for longer than 7 days; zero or less would break every download.
    presign_ttl_seconds: int = Field(
        300, gt=0, le=MAX_PRESIGN_TTL,
        description="lifetime of presigned URLs, seconds (1 to 604800, S3's 7 days)"
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="auto: off only in embedded mode on loopback"
    )
    max_json_body: int = Field(8 * 1024 * 1024, description="largest JSON request body, bytes")
    max_blob_size: int = Field(
        64 * 1024**3, description="largest single uploaded blob, bytes"
    )
    base_dirs: list[Path] = Field(
        default_factory=list, description="folders where workers look for base weights"
    )
    fingerprint_cache: Path | None = Field(
        None, description="fingerprint cache file; default ~/.cache/lorareg/fingerprints.sqlite"
    )
    worker_cache: Path | None = Field(
        None, description="worker-local cache of base weights; default <home>/worker-cache"
    )
    worker_lease_seconds: float = Field(
        30.0, description="job lease; a worker silent this long loses its job to another"
    )
    worker_poll_seconds: float = Field(1.0, description="idle worker's queue polling interval")
    webhook_max_attempts: int = Field(10, description="attempts before a delivery is dead")
    webhook_backoff_seconds: float = Field(
        5.0, description="first retry delay of a webhook delivery (doubles each attempt)"
    )
    log_format: Literal["json", "text"] = Field("text", description="log line format")
    blob_dedup: Literal["auto", "global", "namespace"] = Field(
        "auto", description="global: any pusher learns which blobs exist anywhere (dedup "
        "across tenants); namespace: a namespace-scoped token sees and reuses only blobs its "
        "namespace holds and proves possession of others by uploading them; auto: global in "
        "embedded mode, namespace in production"
    )
    webhook_allow_private: bool = Field(
        False, description="instance-wide: let webhooks subscribed with allow_private target "
        "private and loopback addresses (link-local and cloud metadata stay refused)"
    )
    max_safetensors_header: int = Field(
        DEFAULT_MAX_HEADER, ge=8, le=MAX_HEADER_LEN,
        description="largest adapter safetensors JSON header accepted at push, bytes (a "
        "Llama-70B all-linear LoRA needs 150 KiB)"
    )
    max_safetensors_tensors: int = Field(
        DEFAULT_MAX_TENSORS, ge=1,
        description="most tensors an adapter's safetensors file may declare (Llama-70B "
        "all-linear LoRA: 1,120)"
    )
    upload_read_timeout_seconds: float = Field(
        30.0, gt=0, description="an upload that sends nothing for this long is cut off (408)"
    )
    max_concurrent_uploads_per_token: int = Field(
        8, ge=1, description="blob uploads one token may have in flight at once (429 beyond)"
    )
    resolve_staleness_seconds: float = Field(
        0.75, gt=0, le=60,
        description="resolve answers from memory only while its last look at the change feed "
        "began less than this long ago: a promotion on any replica is served everywhere "
        "within it (the feed is polled three times per period)"
    )

    @property
    def safetensors_limits(self) -> HeaderLimits:
        """The caps on an adapter's safetensors header (push, server and client side)."""
        return HeaderLimits(self.max_safetensors_header, self.max_safetensors_tensors)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'lorareg.db').resolve()}"

    @property
    def effective_blob_url(self) -> str:
        if self.blob_url:
            return self.blob_url
        return f"file://{(self.home / 'blobs').resolve()}"

    @property
    def effective_blob_dedup(self) -> Literal["global", "namespace"]:
        if self.blob_dedup == "auto":
            return "global" if self.mode == "embedded" else "namespace"
        return self.blob_dedup

    @property
    def effective_worker_cache(self) -> Path:
        return self.worker_cache or (self.home / "worker-cache")

    def auth_required(self, host: str | None = None) -> bool:
        """Whether requests must carry a token.

        Only the embedded mode bound to loopback may run without auth; ``auth=off`` anywhere
        else is refused by :meth:`check_production`.
        """
        if self.auth == "required":
            return True
        if self.auth == "off":
            return False
        return not (self.mode == "embedded" and _is_loopback(host or "127.0.0.1"))

    def check_production(self, host: str) -> None:
        """Refuse insecure settings outside embedded development mode."""
        if self.auth == "off" and not (self.mode == "embedded" and _is_loopback(host)):
            raise BadRequest(
                "LORAREG_AUTH=off is only allowed in embedded mode on a loopback address "
                f"(mode={self.mode}, host={host})"
            )
        if self.mode == "production" and self.database_url is None:
            raise BadRequest("production mode needs LORAREG_DATABASE_URL (PostgreSQL)")


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. An invalid value is a BadRequest naming each wrong
    variable on one line (the CLI prints it and exits 4; no traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise BadRequest(f"invalid settings: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """``LORAREG_X: why; LORAREG_Y: why``. Values are not repeated: some may be secrets."""
    wrong = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        wrong.append(f"LORAREG_{field.upper()}: {error['msg']}")
    return "; ".join(wrong)
