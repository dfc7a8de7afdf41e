"""Init container of every lorareg pod: wait until the database schema is usable by this image.

Kubernetes has no pre-upgrade hook outside Helm, so the migration Job (``lorareg db upgrade``)
is applied together with the Deployments. New pods must not serve or claim jobs against the
old schema meanwhile: this script exits 0 once the database is at this image's head revision,
or at a revision this image does not know (a newer release migrated it; our migrations only
expand, so an older image still works, which is what a rollback needs). It exits 1 when the
deadline passes first, and the pod's init container is then restarted by Kubernetes.

    python wait_for_schema.py --timeout 900

Reads LORAREG_DATABASE_URL through the registry's Settings, like every other entry point.
"""

from __future__ import annotations

import argparse
import sys
import time

from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry import migrate
from registry.config import get_settings
from registry.db import make_engine

POLL_SECONDS = 3.0


def schema_ready(engine: Engine, head: str | None, known: set[str]) -> tuple[bool, str]:
    """Whether this image can run on the database, and what the database is at."""
    try:
        current = migrate.current_revision(engine)
    except SQLAlchemyError as exc:  # not reachable yet: keep waiting, say why
        return False, f"database unavailable ({type(exc).__name__})"
    ready = current is not None and (current == head or current not in known)
    return ready, f"database at revision {current or 'none'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait before giving up (0: check once)")
    args = parser.parse_args(argv)
    script = ScriptDirectory.from_config(migrate.alembic_config())
    head = script.get_current_head()
    known = {rev.revision for rev in script.walk_revisions()}
    engine = make_engine(get_settings().effective_database_url)
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            ready, state = schema_ready(engine, head, known)
            if ready:
                print(f"schema ready: {state}, this image needs {head}", file=sys.stderr)
                return 0
            if time.monotonic() >= deadline:
                print(f"schema not ready: {state}, this image needs {head}; run the "
                      "lorareg-migrate Job (lorareg db upgrade)", file=sys.stderr)
                return 1
            time.sleep(POLL_SECONDS)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
