"""The agent's client and a busy portal: it waits out Retry-After, sends nothing to the
portal before then, tries a GET again and hands anything else back to its caller."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from agents.runtime import portal_api
from agents.runtime.portal_api import PortalBusy, PortalClient, PortalRefused, retry_after_seconds
from tests.support.busyserver import BusyServer


@pytest.fixture
def busy_portal():
    portals = []

    def make(busy: int, **kwargs) -> BusyServer:
        portals.append(BusyServer(busy, **kwargs))
        return portals[-1]

    yield make
    for portal in portals:
        portal.close()


def test_a_read_answered_busy_is_tried_again_after_retry_after(busy_portal):
    portal = busy_portal(busy=2)
    client = PortalClient(portal.url, token="t")
    assert client.get("jobs/x/") == {"ok": True}
    times = portal.times
    assert len(times) == 3
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0


def test_a_report_answered_busy_goes_back_to_its_caller_and_nothing_is_sent_early(
    busy_portal,
):
    portal = busy_portal(busy=1)
    client = PortalClient(portal.url, token="t")
    with pytest.raises(PortalBusy) as busy:
        client.post("jobs/x/progress/", {"type": "progress"})
    assert busy.value.retry_after == 1.0
    assert client.post("jobs/x/progress/", {"type": "progress"}) == {"ok": True}
    first, second = portal.times
    assert second - first >= 1.0  # the second report waited for the time the portal gave


def test_a_read_still_busy_after_the_retries_raises(busy_portal, monkeypatch):
    monkeypatch.setattr(portal_api, "BUSY_RETRIES", 1)
    portal = busy_portal(busy=5)
    with pytest.raises(PortalBusy):
        PortalClient(portal.url).get("identity/")
    assert len(portal.seen) == 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("86400", portal_api.MAX_RETRY_AFTER),  # a portal cannot park the agent for a day
        ("-5", 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after_is_read_and_capped(header, expected):
    assert retry_after_seconds(header) == expected


def test_retry_after_may_be_an_http_date():
    in_ten = formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after_seconds(in_ten) <= 10.0


def test_a_machine_over_its_rate_limit_sends_nothing_before_the_retry_after(busy_portal):
    """The portal's per-machine limit answers 429 with Retry-After (agents/api_auth.py)."""
    portal = busy_portal(busy=1, status=429, retry_after="1")
    client = PortalClient(portal.url, token="t")
    with pytest.raises(PortalBusy) as busy:
        client.post("heartbeat/", {})
    assert busy.value.retry_after == 1.0
    assert client.get("jobs/x/") == {"ok": True}
    first, second = portal.times
    assert second - first >= 1.0


def test_a_429_without_retry_after_is_the_portals_refusal(busy_portal):
    portal = busy_portal(busy=1, status=429, retry_after=None)
    with pytest.raises(PortalRefused) as refused:
        PortalClient(portal.url, token="t").get("jobs/x/")
    assert (refused.value.status, refused.value.code) == (429, "busy")
    assert len(portal.seen) == 1
