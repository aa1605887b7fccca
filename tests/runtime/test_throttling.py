"""Network throttling on a schedule: the rules, and the achieved rate on both sides of an
hour boundary through the agent's own store path (applied policy -> open_with_settings)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta

import pytest

from agents.runtime import config, storage_grant, throttling
from agents.runtime.jobs.policy import apply_policy
from tests.runtime.blobstore.conftest import sas_grant, unique_container

KiB = 1024
SCHEDULE = {
    "enabled": True,
    "work_days": [0, 1, 2, 3, 4],
    "work_start": 9,
    "work_end": 18,
    "work_kbps": 4000,  # 500,000 bytes per second
    "off_kbps": 8000,  # 1,000,000 bytes per second
}
MONDAY = datetime(2026, 12, 7)


def test_which_rate_applies_when():
    def at(day, h, m=0):
        return throttling.kbps_at(SCHEDULE, MONDAY + timedelta(days=day, hours=h, minutes=m))

    assert at(0, 8, 59) == 8000 and at(0, 9) == 4000 and at(4, 17, 59) == 4000
    assert at(4, 18) == 8000 and at(5, 12) == 8000  # Friday evening, Saturday
    assert throttling.kbps_at(SCHEDULE | {"enabled": False}, MONDAY) is None
    whole_day = SCHEDULE | {"work_start": 0, "work_end": 24}
    assert throttling.kbps_at(whole_day, MONDAY + timedelta(hours=23, minutes=59)) == 4000
    grid = throttling.week_grid(SCHEDULE)
    assert [sum(hours) for _, hours in grid] == [9, 9, 9, 9, 9, 0, 0]


@pytest.mark.parametrize(
    ("kbps", "text"),
    [
        (512, "512 Kbps"),
        (1500, "1.5 Mbps"),
        (64000, "64 Mbps"),
        (50000, "50 Mbps"),
        (1100, "1.1 Mbps"),
        (1023000, "1,023 Mbps"),
        (1001, "1,001 Kbps"),
    ],
)
def test_rates_read_in_plain_units_and_round_trip_through_the_form(kbps, text):
    assert throttling.format_rate(kbps) == text
    assert throttling.parse_rate(*throttling.split_rate(kbps)) == kbps


def test_status_and_policy_show_print_the_applied_schedule(tmp_path, capsys):
    import json

    from agents.runtime import cli

    config.save_registration(
        config.Registration(
            portal_url="http://portal.invalid", portal_public_key="", portal_fingerprint="",
            subscription_id="s", subscription_name="s", resource_group="rg", vault_id="v",
            vault_name="vault", machine_id="m-1", machine_name="web-01", token="hvn_x",
            broker_url="",
        )
    )  # fmt: skip
    assert cli.main(["configure", "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    assert "network throttling:      off" in capsys.readouterr().out
    _apply(SCHEDULE)
    described = "4 Mbps on Mon, Tue, Wed, Thu, Fri 09:00-18:00, 8 Mbps at other times"
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"network throttling:      {described} (machine time)" in out
    assert "throttled now to:        " in out  # 4 Mbps or 8 Mbps, by this machine's clock
    assert cli.main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["throttling"]
    assert shown["schedule"] == SCHEDULE and shown["now_kbps"] in (4000, 8000)
    assert cli.main(["policy", "show"]) == 0
    assert f"Network throttling: {described}" in capsys.readouterr().out


class _Portal:
    def __init__(self):
        self.posts = []

    def post(self, path, body):
        self.posts.append((path, body))
        return {}


def _apply(schedule):
    portal = _Portal()
    spec = {"items": ["/srv"], "times": ["00:00"], "throttle": schedule}
    apply_policy(config.config_dir(), portal, policy=spec, version=2, spec_hash="h" * 64)
    assert portal.posts[-1][1]["version"] == 2


def _measure(store, op, *, start: datetime, boundary: float, total: float, threads: int = 2):
    """Run ``op`` back to back in ``threads`` threads (as a backup's uploaders do) for
    ``total`` seconds with the local clock starting at ``start``; the achieved rate (bytes
    per second) before and after ``boundary`` seconds, leaving out the first half second of
    each side (the bucket's burst, the switch)."""
    t0 = time.monotonic()
    store.now = lambda: start + timedelta(seconds=time.monotonic() - t0)
    done: list[tuple[float, int]] = []
    counter = itertools.count()

    def run():
        while time.monotonic() - t0 < total:
            n = op(next(counter))
            done.append((time.monotonic() - t0, n))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    def rate(low, high):
        # From the first completion in the window to the last: no partial blob at its edges.
        inside = sorted((t, n) for t, n in done if low <= t < high)
        return sum(n for _, n in inside[1:]) / (inside[-1][0] - inside[0][0])

    before, after = rate(0.5, boundary), rate(boundary + 0.5, total)
    print(f"measured {before:,.0f} B/s before the boundary, {after:,.0f} B/s after")
    return before, after


@pytest.fixture
def container(azurite):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite)
    client = service.create_container(unique_container())
    yield client
    client.delete_container()
    service.close()


@pytest.mark.servers
def test_the_rate_holds_within_ten_percent_on_both_sides_of_the_hour(container):
    """Real bytes to and from Azurite through the machine's grant, as a job opens them."""
    _apply(SCHEDULE)
    grant = sas_grant(container, "racwdl", expires_in=timedelta(hours=1))
    store = storage_grant.open_with_settings(grant, config.Settings())
    assert isinstance(store, throttling.ScheduledStore)
    blob = bytes(range(256)) * (32 * KiB // 256)

    def upload(i):
        store.put(f"data/{i:06d}", blob)
        return len(blob)

    # Monday 08:59:57: three seconds outside work hours (8 Mbps), then work hours (4 Mbps).
    before, after = _measure(
        store, upload, start=MONDAY.replace(hour=8, minute=59, second=57), boundary=3.0, total=6.5
    )
    assert before == pytest.approx(1_000_000, rel=0.10), before
    assert after == pytest.approx(500_000, rel=0.10), after
    assert len(list(store.list("data/"))) > 100  # real blobs in the container

    def download(i):
        return len(store.get(f"data/{i % 100:06d}"))

    # Monday 17:59:57 (restore traffic): three seconds of work hours, then the evening rate.
    before, after = _measure(
        store,
        download,
        start=MONDAY.replace(hour=17, minute=59, second=57),
        boundary=3.0,
        total=6.5,
    )
    assert before == pytest.approx(500_000, rel=0.10), before
    assert after == pytest.approx(1_000_000, rel=0.10), after


def test_a_local_limit_stays_a_ceiling_and_throttling_off_leaves_the_local_limit(monkeypatch):
    from agents.runtime.blobstore.memory import MemoryStore
    from agents.runtime.blobstore.throttle import ThrottledStore

    monkeypatch.setattr(storage_grant, "open_grant", lambda grant, proxies=None: MemoryStore())
    _apply(SCHEDULE)
    store = storage_grant.open_with_settings(
        {}, config.Settings(bandwidth_limit=600_000), now=lambda: MONDAY.replace(hour=3)
    )
    assert store.upload.rate == store.download.rate == 600_000  # below 8 Mbps
    store.now = lambda: MONDAY.replace(hour=10)
    store.put("x", b"1")
    assert store.upload.rate == store.download.rate == 500_000  # 4 Mbps is below the ceiling
    _apply(SCHEDULE | {"enabled": False})
    plain = storage_grant.open_with_settings({}, config.Settings(bandwidth_limit=600_000))
    assert type(plain) is ThrottledStore and plain.upload.rate == 600_000
