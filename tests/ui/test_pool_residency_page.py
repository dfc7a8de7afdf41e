"""The replicas x versions matrix of a pool page: what each replica reports against the desired
set, drift highlighted, an incompatible base with both fingerprints, escaped agent text."""

from __future__ import annotations

import re
from pathlib import Path

from registry.db import make_session_factory, transaction
from registry.services import desired_sets, pools, residency
from registry.services.residency import Report, Reported
from registry.statuses import AdapterState
from tests.ui.conftest import UI
from tests.ui.helpers import ACTOR, XSS
from tests.ui.test_pool_pages import POOL_PAGE, make_pool, rows


def report_replicas(ui: UI) -> tuple[str, str]:
    """gpu-0 holds v4 and v5 (compatible); gpu-1 runs another base and holds v4 with other
    bytes. Returns v4's and v5's served names."""
    with transaction(make_session_factory(ui.engine)) as session:
        pool = pools.get_pool(session, "acme/gpu-a")
        v4, v5 = (e.version for e in desired_sets.desired(session, None, pool))
        names = desired_sets.served(v4), desired_sets.served(v5)
        good = [Reported(desired_sets.served(v), AdapterState.LOADED, v.manifest_digest)
                for v in (v4, v5)]
        residency.heartbeat(session, ACTOR, pool, "gpu-0", Report(
            engine="vllm", agent_version="0.1", interval_seconds=10, cache_bytes=1,
            base_fingerprint=pool.base.fingerprint, adapters=good))
        residency.heartbeat(session, ACTOR, pool, "gpu-1", Report(
            engine="vllm", agent_version="0.1", interval_seconds=10, cache_bytes=1,
            base_fingerprint="f" * 64, error=XSS, adapters=[
                Reported(names[0], AdapterState.LOADED, "e" * 64)]))
    return names


def test_pool_page_shows_the_residency_matrix(ui: UI, tmp_path: Path) -> None:
    make_pool(ui, tmp_path)
    ui.sign_in("reader", "acme")
    empty = ui.get(POOL_PAGE)
    assert "No replica has reported yet" in empty.text
    v4, _ = report_replicas(ui)
    page = ui.get(POOL_PAGE)
    assert page.status_code == 200, page.text
    header = page.text.split('id="residency"', 1)[1].split("</thead>", 1)[0]
    assert "acme/support-bot@4" in header and "acme/support-bot@5" in header
    assert "acme/support-bot@1" in header and "(draining)" in header  # unpinned, draining
    gpu0, gpu1 = rows(page.text, "residency")
    assert "gpu-0" in gpu0 and "st-compatible" in gpu0 and gpu0.count("st-loaded") == 2
    assert 'class="cell drift"' not in gpu0
    assert "gpu-1" in gpu1 and "st-incompatible" in gpu1
    assert "ffffffffffff" in gpu1  # both fingerprints, the replica's and the pool's
    cells = re.findall(r'<td class="cell( drift| muted)?"', gpu1)
    # v4 held on the wrong base (and with other bytes); v5 not held; v1 (draining) not held
    assert cells == [" drift", " muted", " muted"]
    assert "st-bytes_differ" in gpu1 and f'title="{v4}"' in header
    assert "<script>window.__xss" not in page.text and "&lt;script&gt;" in page.text
    assert 'id="drift-count"' in page.text
