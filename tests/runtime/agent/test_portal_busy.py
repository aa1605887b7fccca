"""The agent's client and a busy portal: it waits out Retry-After, sends nothing to the
portal before then, tries a GET again and hands anything else back to its caller."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.runtime import portal_api
from agents.runtime.portal_api import PortalBusy, PortalClient, retry_after_seconds


class BusyPortal:
    """A real HTTP server that answers the first ``busy`` requests 503 + Retry-After: 1."""

    def __init__(self, busy: int):
        self.busy = busy
        self.seen: list[tuple[str, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, time.monotonic()))
                if len(outer.seen) <= outer.busy:
                    body, status = {"error": "busy", "message": "busy"}, 503
                else:
                    body, status = {"ok": True}, 200
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def busy_portal():
    portals = []

    def make(busy: int) -> BusyPortal:
        portals.append(BusyPortal(busy))
        return portals[-1]

    yield make
    for portal in portals:
        portal.close()


def test_a_read_answered_busy_is_tried_again_after_retry_after(busy_portal):
    portal = busy_portal(busy=2)
    client = PortalClient(portal.url, token="t")
    assert client.get("jobs/x/") == {"ok": True}
    times = [at for _, at in portal.seen]
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
    (_, first), (_, second) = portal.seen
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
