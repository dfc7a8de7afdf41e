"""Who may report live serving metrics (``POST /api/v1/metrics/live``): any token that may
read the namespace, as the README's roles say (a router resolves with a reader token), and
only for the namespaces it may read; a refused batch stores nothing."""

from __future__ import annotations

from typing import Any

import pytest

from registry.models import AuditEvent, LiveSample
from tests.conftest import BACKENDS
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, push

LIVE = "/api/v1/metrics/live"


def report(adapter: str, version: int = 1, requests: int = 10, errors: int = 0) -> dict[str, Any]:
    return {"adapter": adapter, "version": version, "requests": requests, "errors": errors,
            "values": {"latency_p95_ms": 120.0}}


@pytest.fixture
def two_tenants(api: Api) -> Api:
    for adapter in ("acme/bot", "globex/bot"):
        assert push(api, api.admin, adapter).status_code == 201
    return api


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_scoped_reader_reports_for_its_own_namespace(two_tenants: Api) -> None:
    api = two_tenants
    reader = api.token("reader", "acme")
    answer = api.client.post(LIVE, json={"reports": [report("acme/bot")]}, headers=h(reader))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 1}
    assert api.count(LiveSample) == 1


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_scoped_reader_cannot_report_for_another_namespace(two_tenants: Api) -> None:
    api = two_tenants
    reader = api.token("reader", "acme")
    before = (api.count(LiveSample), api.count(AuditEvent))
    alone = api.client.post(LIVE, json={"reports": [report("globex/bot", errors=10)]},
                            headers=h(reader))
    assert "globex" in assert_problem(alone, 403, "permission_denied")["detail"]
    # A batch is all or nothing: its own namespace's report is not stored either.
    mixed = api.client.post(LIVE, json={"reports": [report("acme/bot"), report("globex/bot")]},
                            headers=h(reader))
    assert_problem(mixed, 403, "permission_denied")
    # Another namespace's adapter that does not exist: still 403, nothing learnt about it.
    unknown = api.client.post(LIVE, json={"reports": [report("globex/nothing")]},
                              headers=h(reader))
    assert_problem(unknown, 403, "permission_denied")
    assert (api.count(LiveSample), api.count(AuditEvent)) == before


def test_unauthenticated_report_is_refused(two_tenants: Api) -> None:
    answer = two_tenants.client.post(LIVE, json={"reports": [report("acme/bot")]})
    assert_problem(answer, 401)
    assert two_tenants.count(LiveSample) == 0
