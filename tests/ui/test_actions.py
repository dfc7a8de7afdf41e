"""Actions of the UI in-process: confirmation, CSRF and origin checks, roles, and the same
service calls (and so the same audit events and history rows) as the API."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from registry.db import make_session_factory, transaction
from registry.models import AdapterVersion, Channel, Job, Rollout
from registry.services import channels
from registry.services.channels import Change
from registry.services.context import Actor
from tests.conftest import BACKENDS
from tests.ui.conftest import UI
from tests.ui.helpers import ADAPTER

PROD = f"/ui/adapters/{ADAPTER}/channels/prod"
STAGING = f"/ui/adapters/{ADAPTER}/channels/staging"


def channel_state(ui: UI, name: str) -> tuple[int | None, int | None, int, int]:
    """(stable number, canary number, canary weight bp, revision) of a channel."""
    with ui.engine.connect() as conn:
        chan = conn.execute(select(Channel).where(Channel.name == name)).one()
        numbers = dict(conn.execute(select(AdapterVersion.id, AdapterVersion.number)).all())
    return (numbers.get(chan.stable_version_id), numbers.get(chan.canary_version_id),
            chan.canary_weight_bp, chan.revision)


def rollout_status(ui: UI) -> str:
    with ui.engine.connect() as conn:
        return str(conn.scalar(select(Rollout.status).where(Rollout.id == ui.seeded.rollout_id)))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_abort_from_the_channel_page(ui: UI) -> None:
    ui.sign_in("promoter")
    page = ui.get(PROD).text
    abort = re.search(r'id="abort" href="([^"]+)"', page)
    assert abort is not None
    confirm = ui.get(abort.group(1))
    assert confirm.status_code == 200 and "stable <a" in confirm.text
    assert "Abort the canary of acme/support-bot@5 on prod?" in confirm.text
    done = ui.post(abort.group(1), {"reason": "p95 regression"}, csrf_from=abort.group(1))
    assert done.status_code == 303 and done.headers["location"] == f"{PROD}?done=aborted"
    assert channel_state(ui, "prod")[:3] == (4, None, 0)
    assert rollout_status(ui) == "aborted"
    # The same audit event the API writes, with the signed-in token as the actor.
    assert ui.actions()[-1] == ("channel.rollout.aborted", "token:promoter-None",
                                f"{ADAPTER}:prod")
    after = ui.get(done.headers["location"]).text
    assert "Rollout aborted; the stable version keeps serving." in after
    assert 'data-action="rollout.aborted"' in after and "p95 regression" in after
    assert 'id="abort"' not in after


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_posts_without_csrf_token_or_from_elsewhere_are_refused(ui: UI) -> None:
    ui.sign_in("admin")
    url = f"/ui/rollouts/{ui.seeded.rollout_id}/abort"
    before = (channel_state(ui, "prod"), len(ui.actions()))
    refusals = [
        ui.post(url, {"reason": "no token"}),
        ui.post(url, {"reason": "wrong", "csrf_token": "0" * 64}),
        ui.post(url, {"reason": "elsewhere"}, origin="https://evil.example", csrf_from=PROD),
        ui.post(url, {"reason": "no origin"}, origin=None, csrf_from=PROD),
        ui.post(url, {"reason": "null origin"}, origin="null", csrf_from=PROD),
    ]
    assert [r.status_code for r in refusals] == [403] * 5
    assert all('class="error-page' in r.text for r in refusals)
    assert "CSRF token" in refusals[0].text and "another origin" in refusals[2].text
    assert (channel_state(ui, "prod"), len(ui.actions())) == before
    assert rollout_status(ui) == "progressing"


def test_csrf_token_belongs_to_one_session(ui: UI) -> None:
    ui.sign_in("admin")
    mine = ui.csrf(PROD)
    ui.sign_in("admin")  # another token, another session
    refused = ui.post(f"/ui/rollouts/{ui.seeded.rollout_id}/pause", {"csrf_token": mine})
    assert refused.status_code == 403 and rollout_status(ui) == "progressing"


def test_reader_sees_no_action_buttons_and_forged_posts_are_refused(ui: UI) -> None:
    ui.sign_in("reader")
    pages = [PROD, STAGING, f"/ui/adapters/{ADAPTER}/versions/5", "/ui/jobs"]
    for path in pages:
        html = ui.get(path).text
        for label in ("Abort…", "Pause…", "Roll back", "Promote…", "Yank…", "Cancel…"):
            assert label not in html, (path, label)
    confirm = ui.get(f"/ui/rollouts/{ui.seeded.rollout_id}/abort")
    assert confirm.status_code == 403
    before = (channel_state(ui, "prod"), channel_state(ui, "staging"), len(ui.actions()))
    # A valid CSRF token of the reader's own session does not lend it any permission.
    forged = [
        ui.post(f"/ui/rollouts/{ui.seeded.rollout_id}/abort", {}, csrf_from=PROD),
        ui.post(f"{STAGING}/rollback", {"to_version": "2"}, csrf_from=PROD),
        ui.post(f"/ui/adapters/{ADAPTER}/versions/5/yank", {"reason": "x"}, csrf_from=PROD),
        ui.post(f"/ui/adapters/{ADAPTER}/versions/3/promote", {"channel": "prod"},
                csrf_from=PROD),
        ui.post(f"/ui/jobs/{ui.seeded.queued_job}/cancel", {}, csrf_from=PROD),
    ]
    assert [r.status_code for r in forged] == [403] * 5
    assert "may not promote" in forged[0].text
    assert (channel_state(ui, "prod"), channel_state(ui, "staging"), len(ui.actions())) == before


def test_unauthenticated_post_is_refused(ui: UI) -> None:
    refused = ui.post(f"/ui/rollouts/{ui.seeded.rollout_id}/abort", {"csrf_token": "0" * 64})
    assert refused.status_code == 403  # no session: no CSRF secret, nothing to check against
    assert rollout_status(ui) == "progressing"


def test_pause_and_resume(ui: UI) -> None:
    ui.sign_in("promoter")
    for action, status in (("pause", "paused"), ("resume", "progressing")):
        url = f"/ui/rollouts/{ui.seeded.rollout_id}/{action}"
        assert ui.post(url, {"reason": action}, csrf_from=url).status_code == 303
        assert rollout_status(ui) == status
    assert [a[0] for a in ui.actions()[-2:]] == ["channel.rollout.paused",
                                                 "channel.rollout.resumed"]


def test_rollback_restores_what_the_confirmation_showed(ui: UI) -> None:
    ui.sign_in("promoter")
    for number in (3, 4):
        url = f"/ui/adapters/{ADAPTER}/versions/{number}/promote"
        ui.post(url, {"channel": "beta", "mode": "now"}, csrf_from=f"{url}?channel=beta")
    beta = f"/ui/adapters/{ADAPTER}/channels/beta"
    assert "Roll back to v3…" in ui.get(beta).text
    assert "Roll back acme/support-bot:beta to v3?" in ui.get(f"{beta}/rollback").text
    revision = channel_state(ui, "beta")[3]
    # No number posted: the service chooses, and it chooses what the page showed.
    done = ui.post(f"{beta}/rollback", {"to_version": "", "expect_revision": str(revision),
                                        "reason": "v4 leaks"}, csrf_from=beta)
    assert done.status_code == 303 and channel_state(ui, "beta")[0] == 3
    assert ui.actions()[-1][0] == "channel.rollback"
    # Rolling back again would go further back, and there is nothing before v3.
    assert "Roll back to" not in ui.get(beta).text
    stale = ui.post(f"{beta}/rollback", {"to_version": "4", "expect_revision": str(revision)},
                    csrf_from=beta)
    assert stale.status_code == 409 and "someone changed it meanwhile" in stale.text
    named = ui.post(f"{STAGING}/rollback", {"to_version": "2"}, csrf_from=STAGING)
    assert named.status_code == 303 and channel_state(ui, "staging")[0] == 2


def test_promote_now_and_as_a_canary(ui: UI) -> None:
    ui.sign_in("admin")
    url = f"/ui/adapters/{ADAPTER}/versions/3/promote"
    confirm = ui.get(f"{url}?channel=beta")
    assert "does not exist yet" in confirm.text
    now = ui.post(url, {"channel": "beta", "mode": "now", "expect_revision": ""},
                  csrf_from=f"{url}?channel=beta")
    assert now.headers["location"] == f"/ui/adapters/{ADAPTER}/channels/beta?done=promoted"
    assert channel_state(ui, "beta")[:2] == (3, None)
    revision = channel_state(ui, "beta")[3]
    canary = ui.post(f"/ui/adapters/{ADAPTER}/versions/4/promote", {
        "channel": "beta", "mode": "canary", "steps": "20, 100", "interval_seconds": "60",
        "gates": "live.error_rate <= 0.05\neval.accuracy >= stable - 0.1",
        "expect_revision": str(revision), "reason": "try v4"}, csrf_from=url)
    assert canary.status_code == 303
    assert channel_state(ui, "beta")[:3] == (3, 4, 2000)
    assert [a[0] for a in ui.actions()[-3:]] == ["channel.promoted", "channel.rollout.started",
                                                 "channel.rollout.step"]
    bad = ui.post(url, {"channel": "beta", "mode": "canary", "steps": "50"}, csrf_from=url)
    assert bad.status_code == 400 and "end at 100" in bad.text


def test_yank_needs_a_reason_and_marks_the_version(ui: UI) -> None:
    ui.sign_in("writer")
    url = f"/ui/adapters/{ADAPTER}/versions/2/yank"
    assert "Yank acme/support-bot@2?" in ui.get(url).text
    assert ui.post(url, {"reason": " "}, csrf_from=url).status_code == 400
    assert ui.post(url, {"reason": "leaks PII"}, csrf_from=url).status_code == 303
    page = ui.get(f"/ui/adapters/{ADAPTER}/versions/2").text
    assert "Yanked" in page and "leaks PII" in page
    assert ui.actions()[-1] == ("version.yanked", "token:writer-None", f"{ADAPTER}@2")


def test_cancel_a_queued_job(ui: UI) -> None:
    ui.sign_in("writer")
    url = f"/ui/jobs/{ui.seeded.queued_job}/cancel"
    assert "It is cancelled at once." in ui.get(url).text
    assert ui.post(url, {}, csrf_from=url).headers["location"] == "/ui/jobs?done=cancelled"
    with ui.engine.connect() as conn:
        assert conn.scalar(select(Job.status).where(Job.id == ui.seeded.queued_job)) == (
            "cancelled")
    assert ui.actions()[-1][0] == "job.cancel_requested"


def test_sign_out_clears_the_cookie(ui: UI) -> None:
    ui.sign_in("reader")
    out = ui.post("/ui/logout", {}, csrf_from="/ui")
    assert out.status_code == 303 and 'lorareg_token=""' in out.headers["set-cookie"]
    assert ui.get("/ui").status_code == 303


def test_embedded_actions_still_need_csrf(embedded_ui: UI) -> None:
    url = f"/ui/rollouts/{embedded_ui.seeded.rollout_id}/abort"
    assert embedded_ui.post(url, {"reason": "x"}).status_code == 403
    done = embedded_ui.post(url, {"reason": "x"}, csrf_from=url)
    assert done.status_code == 303
    assert embedded_ui.actions()[-1][:2] == ("channel.rollout.aborted", "local")


def test_channel_history_is_paginated(ui: UI) -> None:
    with transaction(make_session_factory(ui.engine)) as session:
        for i in range(60):
            channels.configure(session, ADAPTER, "prod", Change(Actor("ops"), reason=f"c{i}"),
                               profile="any")
    ui.sign_in("reader")
    first = ui.get(PROD).text
    assert first.count('data-action="configured"') == 50
    nxt = re.search(r'rel="next" href="([^"]+)"', first)
    assert nxt is not None
    rest = ui.get(nxt.group(1).replace("&amp;", "&")).text
    assert rest.count('data-action="configured"') == 10 and 'data-action="promoted"' in rest
