"""A job whose agent message the broker refused: its page says "Waiting for the message
broker", and the words go away live, without a reload, once the portal worker's outbox
pass sends it. (The broker is broken in this process, where the job starts: the embedded
broker's folder replaced by a file, or Redis behind a cut FaultProxy.)"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.timeout(120)]


@contextlib.contextmanager
def broker_broken(settings, monkeypatch):
    from tests.agents.test_dispatch import broker_folder_broken

    if not settings.REDIS_URL:
        with broker_folder_broken():
            yield
        return
    from tests.faults._agents import portal_broker_at
    from tests.support.faultproxy import FaultProxy

    target = urlsplit(settings.REDIS_URL)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        url = settings.REDIS_URL.replace(f":{target.port}", f":{proxy.port}", 1)
        with portal_broker_at(settings, monkeypatch, url):
            proxy.cut()
            yield


@pytest.fixture(autouse=True)
def _fresh_fast_path(monkeypatch):
    from agents import dispatch

    monkeypatch.setattr(dispatch, "_refused", {"until": 0.0, "error": ""})


def test_the_job_page_says_waiting_for_the_broker_until_the_message_goes(
    live_portal, portal_owner, page, settings, monkeypatch, tmp_path
):
    from django.utils import timezone

    from agents import dispatch
    from jobs import services
    from tests.support import builders

    settings.STORAGE_DIR = tmp_path / "storage"
    vault = builders.make_vault(resource_group=portal_owner.resource_group, name="vault-e2e")
    machine = builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    with broker_broken(settings, monkeypatch):
        job = services.backup_start(machine=machine, user=portal_owner.user)
        page.goto(f"{live_portal}/jobs/{job.pk}/")
        waiting = page.locator(f"#job-{job.pk}-live [data-field=broker-wait]")
        expect(waiting).to_contain_text("Waiting for the message broker (since")
        expect(waiting).to_contain_text("1 attempt:")
        expect(page.locator("body")).to_have_attribute("data-live", "open")
    dispatch.outbox_send(now=timezone.now() + timedelta(minutes=1))
    expect(waiting).to_have_count(0, timeout=10_000)
