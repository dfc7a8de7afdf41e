"""Who is acting: passed to every mutating service so audit events name the actor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    name: str
    request_id: str | None = None


SYSTEM = Actor("system")
