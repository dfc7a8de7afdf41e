"""Answers the client composes itself: a wire model plus what the client did (bytes moved,
where it wrote), so one JSON document says everything (``lorareg ... --json`` prints them)."""

from __future__ import annotations

from pydantic import BaseModel

from registry.wire import ArtifactOut, BaseOut, BaseRefOut, ResolveOut, VersionOut


class PushResult(VersionOut):
    """The version pushed (or found: ``created`` False) and what this push uploaded."""

    uploaded_bytes: int
    uploaded_digests: list[str]


class PulledVersion(VersionOut):
    """The version pulled, the folder it is in and the bytes this pull downloaded."""

    path: str
    downloaded_bytes: int


class PulledArtifact(ArtifactOut):
    """The merged artifact pulled, the folder it is in and the bytes this pull downloaded."""

    path: str
    downloaded_bytes: int


class RegisteredBase(BaseOut):
    """The base registered (``created``) or found, and the bytes this call uploaded."""

    created: bool
    uploaded_bytes: int


class RegisteredSnapshot(RegisteredBase):
    """A Hugging Face cache snapshot registered as a base, and its folder."""

    snapshot: str


class Compatibility(BaseModel):
    """Local base weights that are exactly those a version was verified against."""

    ref: str
    compatible: bool
    fingerprint: str
    base: BaseRefOut
    path: str
    tensors: int
    total_bytes: int


class Resolved(ResolveOut):
    """A resolve answer and its ``ETag`` (changes whenever the channel does)."""

    etag: str | None
