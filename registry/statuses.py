"""Every status a row can be in, one ``StrEnum`` per family, defined here and nowhere else.

Members are ``str`` subclasses whose values are exactly the strings stored in the database and
sent over the API, so a member compares equal to its stored string and serialises as it; no
migration stands behind them. Models map the columns with :class:`registry.models.StatusType`;
services, schemas, the client, the CLI and the templates compare against members, never against
literals (tests/test_statuses.py looks for literals outside this module). Pure: no database or
web import, so the client side may use it too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from registry.errors import BadRequest


class VersionStatus(StrEnum):
    """Whether a version may be resolved, pulled as ``latest`` and promoted."""

    ACTIVE = "active"
    YANKED = "yanked"


class CompatStatus(StrEnum):
    """A version's tensors checked against its base's manifest: ``UNVERIFIED`` while the base
    is not registered (checked when it is)."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    INCOMPATIBLE = "incompatible"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
JOB_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class RolloutStatus(StrEnum):
    """The canary state machine (see :mod:`registry.services.rollouts`)."""

    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ABORTED = "aborted"


ROLLOUT_ACTIVE = frozenset({RolloutStatus.PENDING, RolloutStatus.PROGRESSING,
                            RolloutStatus.PAUSED})
ROLLOUT_FINAL = frozenset({RolloutStatus.PROMOTED, RolloutStatus.ABORTED})


class PausedBy(StrEnum):
    """Who paused a rollout: a person (until resumed) or an inconclusive analysis (until data
    arrives)."""

    MANUAL = "manual"
    ANALYSIS = "analysis"


class GateVerdict(StrEnum):
    """A gate evaluated once: missing inputs are ``INCONCLUSIVE``, never a pass."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class DeliveryStatus(StrEnum):
    """A webhook delivery: retried with backoff while ``PENDING``, then ``DEAD``."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class BaseVerdict(StrEnum):
    """A serving replica's base weights against its pool's base: ``UNKNOWN`` until its agent
    reports a fingerprint of the weights it loaded (registry.services.residency)."""

    COMPATIBLE = "compatible"
    INCOMPATIBLE = "incompatible"
    UNKNOWN = "unknown"


class AdapterState(StrEnum):
    """A served name on one replica, as its agent reports it: loadable now, being pulled or
    loaded, or refused by the engine (with the engine's error)."""

    LOADED = "loaded"
    LOADING = "loading"
    FAILED = "failed"


class DriftKind(StrEnum):
    """What is wrong with a replica's residency (registry.services.residency): a desired name
    it has not loaded in time, a name it should not hold, a load the engine refused, bytes
    that differ from what the name means, or anything loaded on an incompatible base."""

    MISSING = "missing"
    EXTRA = "extra"
    FAILED = "failed"
    BYTES_DIFFER = "bytes_differ"
    INCOMPATIBLE_BASE = "incompatible_base"


E = TypeVar("E", bound=StrEnum)


def parse(enum: type[E], value: str, what: str = "status") -> E:
    """``value`` (a filter or body field) as a member of ``enum``: BadRequest naming every
    allowed value otherwise, never a database error for a string no row can hold."""
    try:
        return enum(value)
    except ValueError:
        raise BadRequest(f"{what} must be one of: {', '.join(enum)}") from None


#: Every family and set by name: the UI's templates get these as globals, so that they
#: compare with members (``v.status == VersionStatus.YANKED``) as the Python code does.
NAMES: dict[str, object] = {
    "VersionStatus": VersionStatus, "CompatStatus": CompatStatus, "JobStatus": JobStatus,
    "RolloutStatus": RolloutStatus, "PausedBy": PausedBy, "GateVerdict": GateVerdict,
    "DeliveryStatus": DeliveryStatus, "BaseVerdict": BaseVerdict, "AdapterState": AdapterState,
    "DriftKind": DriftKind, "JOB_ACTIVE": JOB_ACTIVE, "JOB_FINAL": JOB_FINAL,
    "ROLLOUT_ACTIVE": ROLLOUT_ACTIVE, "ROLLOUT_FINAL": ROLLOUT_FINAL,
}
