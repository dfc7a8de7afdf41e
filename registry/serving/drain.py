"""When an exported name that left may go: the drain rule, and the state that remembers it.

An engine may load from an exported folder for as long as routers may still send its name: a
router resolved the name a moment before the channel changed, or caches answers. vLLM keeps
only ``--max-cpu-loras`` adapters in memory and reloads an evicted one from its folder when
asked again; if the folder is gone, the whole server stops (tests/serving/test_vllm_lab.py).
So a folder (or a loaded adapter) that left the desired set stays for a **drain period**, and
goes only when both:

* the registry says it left at least ``drain`` ago (``removed_at`` of the pool's desired-set
  history; None when the registry no longer knows the name, e.g. its adapter was deleted), and
* this export has seen it gone for at least ``drain`` (the first time it noticed, recorded in
  a state file under the exported folder).

The second condition keeps the rule safe when this host's clock runs ahead of the registry's
and when the registry has forgotten the name; the first keeps it from depending on how often
the export runs. A name that comes back (a rollback to it) is forgotten by the state.

The state file is JSON, replaced atomically (temporary file + rename) and only written under
the export's lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from registry.errors import Conflict
from registry.serving.files import write_atomically


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class DrainState:
    """Names seen gone and since when, plus what the folder belongs to (``owner``)."""

    path: Path
    owner: str | None = None
    gone_since: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> DrainState:
        """The state at ``path`` (empty if absent); Conflict if it is not one we wrote."""
        if not path.exists():
            return cls(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            since = {str(k): parse_time(v) for k, v in dict(doc["gone_since"]).items()}
            return cls(path, doc.get("owner"), since)
        except (ValueError, KeyError, TypeError) as exc:
            raise Conflict(f"{path} is not an export state file ({exc}); move it away to start "
                           "the drain periods over", path=str(path)) from None

    def notice(self, gone: Iterable[str], now: datetime) -> None:
        """Record when each name in ``gone`` was first seen gone; forget names not gone."""
        names = set(gone)
        self.gone_since = {n: self.gone_since.get(n, now) for n in sorted(names)}

    def removable_at(self, name: str, left_at: datetime | None, drain: float) -> datetime:
        """When ``name`` (noticed gone) may go: ``drain`` after both its registry departure
        and this export's first notice."""
        start = self.gone_since[name]
        if left_at is not None and left_at > start:
            start = left_at
        return start + timedelta(seconds=drain)

    def forget(self, name: str) -> None:
        self.gone_since.pop(name, None)

    def save(self) -> None:
        doc: dict[str, Any] = {"owner": self.owner, "gone_since": {
            n: t.isoformat() for n, t in sorted(self.gone_since.items())}}
        write_atomically(self.path, (json.dumps(doc, indent=2) + "\n").encode())


def due(state: DrainState, names: Iterable[str], left: Mapping[str, datetime],
        drain: float, now: datetime) -> dict[str, datetime]:
    """``{name: removable_at}`` of the ``names`` (all noticed gone) whose drain has passed."""
    out = {}
    for name in names:
        at = state.removable_at(name, left.get(name), drain)
        if at <= now:
            out[name] = at
    return out


def parse_time(value: Any) -> datetime:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone)."""
    when = datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
