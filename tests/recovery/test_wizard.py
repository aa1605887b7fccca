"""The Recover Data pages: who may use them, the calendar, questions to the agent and its
answers (from the cache, never the database), starting a restore."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, RecoveryPoint
from jobs.recovery import services
from jobs.schedule import zone
from portal.models import Role, Subscription
from tests.recovery.conftest import make_machine, make_vault

pytestmark = pytest.mark.django_db


def wizard_url(source, target) -> str:
    return reverse("recovery:wizard", args=[source.pk, target.pk])


def test_the_start_page_offers_the_owners_machines(client, alice, web01, web02):
    client.force_login(alice)
    page = client.get(reverse("recovery:start")).content.decode()
    assert "web-01" in page and "web-02" in page
    page = client.get(reverse("recovery:start"), {"source": web01.pk}).content.decode()
    assert "This machine (web-01)" in page and "Another machine: web-02" in page
    assert "haven-agent recovery-passphrase --from-machine" in page
    response = client.get(reverse("recovery:start"), {"source": web01.pk, "target": web02.pk})
    assert response.status_code == 302 and response.url == wizard_url(web01, web02)


def test_outsiders_and_readers_cannot_recover(client, member, charlie, web01, points):
    client.force_login(charlie)
    assert client.get(wizard_url(web01, web01)).status_code == 404
    assert "web-01" not in client.get(reverse("recovery:start")).content.decode()
    reader = member(Role.READER)
    client.force_login(reader)
    assert client.get(wizard_url(web01, web01)).status_code == 403
    assert "No machine to recover" in client.get(reverse("recovery:start")).content.decode()
    operator = member(Role.BACKUP_OPERATOR)
    client.force_login(operator)
    assert client.get(wizard_url(web01, web01)).status_code == 200


def test_a_machine_of_another_vault_is_not_a_target(client, alice, subscription, web01):
    elsewhere = make_machine(make_vault(subscription, "vault-two"), "far-01")
    client.force_login(alice)
    assert client.get(wizard_url(web01, elsewhere)).status_code == 403


def test_the_calendar_marks_each_day_with_points_and_shows_the_newest_days_times(
    client, alice, web01, points
):
    client.force_login(alice)
    page = client.get(wizard_url(web01, web01)).content.decode()
    assert page.count('class="calendar-day has-points') == 3
    newest = points[-1].created_at.astimezone(zone(web01.time_zone))
    assert f'data-day="{newest:%Y-%m-%d}" aria-current="date"' in page
    assert _values(page, "rp") == [points[-1].snapshot_id]  # the latest: no extra click


def times_url(source, target) -> str:
    return reverse("recovery:times", args=[source.pk, target.pk])


def local_day(point) -> str:
    return f"{point.created_at.astimezone(zone(point.machine.time_zone)):%Y-%m-%d}"


def test_choosing_a_day_loads_that_days_times_only(client, alice, web01, points):
    client.force_login(alice)
    for point in points:
        response = client.get(
            times_url(web01, web01), {"day": local_day(point)}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 200
        assert "HX-Request" in response["Vary"]  # the full page has the same URL
        fragment = response.content.decode()
        assert fragment.lstrip().startswith(
            f'<fieldset class="times" data-day="{local_day(point)}"'
        )
        assert _values(fragment, "rp") == [point.snapshot_id]
        assert "<html" not in fragment and "hx-post=" in fragment
    empty = client.get(times_url(web01, web01), {"day": "2001-01-01"}, HTTP_HX_REQUEST="true")
    assert "No recovery points on this day." in empty.content.decode()


def test_a_days_times_are_in_the_machines_time_zone_like_its_calendar(client, alice, web01):
    """A point made at 23:30 UTC on a machine in Amsterdam was made at 00:30 the next day
    there: it is under that day, at 00:30, and so is the label step 3 repeats."""
    web01.time_zone = "Europe/Amsterdam"
    web01.save(update_fields=["time_zone"])
    at = timezone.now().replace(hour=23, minute=30, second=0, microsecond=0) - timedelta(days=2)
    point = RecoveryPoint.objects.create(
        machine=web01, vault=web01.vault, snapshot_id="ab" * 16, manifest_blob="snapshots/ab",
        created_at=at, tagged_for=at, kind=RecoveryPoint.Kind.ADHOC, logical_bytes=10,
        file_count=1,
    )  # fmt: skip
    local = at.astimezone(zone("Europe/Amsterdam"))
    assert local.date() != at.date()  # the next day there (UTC+1 or +2)
    client.force_login(alice)
    page = client.get(wizard_url(web01, web01)).content.decode()
    assert f'data-day="{local:%Y-%m-%d}" aria-current="date"' in page
    assert _values(page, "rp") == [point.snapshot_id]
    times = page[page.index('<fieldset class="times"') :]
    assert f"{local:%H:%M} <span" in times and 'data-label="' in times
    assert f"{local:%d} " in times.split('data-label="', 1)[1].split('"', 1)[0]
    assert f"{at:%H:%M} <span" not in times  # not the UTC time


def test_without_script_a_days_link_shows_the_wizard_with_that_day_chosen(
    client, alice, web01, points
):
    client.force_login(alice)
    page = client.get(wizard_url(web01, web01)).content.decode()
    oldest = points[0]
    link = f'href="{times_url(web01, web01)}?day={local_day(oldest)}"'
    assert link in page
    chosen = client.get(times_url(web01, web01), {"day": local_day(oldest)}).content.decode()
    assert "<html" in chosen and _values(chosen, "rp") == [oldest.snapshot_id]
    assert f'data-day="{local_day(oldest)}" aria-current="date"' in chosen


def test_a_points_id_loads_its_day_for_recover_this_version(client, alice, web01, points):
    client.force_login(alice)
    oldest = points[0]
    fragment = client.get(
        times_url(web01, web01), {"rp": oldest.snapshot_id}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert f'data-day="{local_day(oldest)}"' in fragment
    assert _values(fragment, "rp") == [oldest.snapshot_id]
    for unknown in ("f" * 32, "not-an-id", "0" * 65):
        assert client.get(times_url(web01, web01), {"rp": unknown}).status_code == 404


@pytest.mark.parametrize(
    "day",
    [
        "yesterday",
        "2026-02-30",
        "2026-1-1",
        "20261206",
        "\u0662\u0660\u0662\u0666-01-01",
        "",
    ],
)
def test_a_day_that_is_not_a_date_is_refused_in_words(client, alice, web01, points, day):
    client.force_login(alice)
    response = client.get(times_url(web01, web01), {"day": day}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "YYYY-MM-DD" in response.content.decode()


def test_the_times_have_the_wizards_access_checks(
    client, alice, member, charlie, subscription, web01, points
):
    day = {"day": local_day(points[0])}
    client.force_login(charlie)
    assert client.get(times_url(web01, web01), day).status_code == 404
    theirs = make_machine(make_vault(Subscription.objects.get(name="Fabrikam"), "theirs"), "x-01")
    assert client.get(times_url(theirs, theirs), day).status_code == 200  # their own
    client.force_login(alice)
    assert client.get(times_url(theirs, theirs), day).status_code == 404
    assert client.get(times_url(web01, theirs), day).status_code == 404
    elsewhere = make_machine(make_vault(subscription, "vault-two"), "far-01")
    assert client.get(times_url(web01, elsewhere), day).status_code == 403
    client.force_login(member(Role.READER))
    assert client.get(wizard_url(web01, web01)).status_code == 403
    assert client.get(times_url(web01, web01), day).status_code == 403
    client.force_login(member(Role.BACKUP_OPERATOR))
    assert client.get(times_url(web01, web01), day, HTTP_HX_REQUEST="true").status_code == 200


def test_browsing_asks_the_target_agent_and_shows_its_answer(
    client, alice, web01, web02, points, sent, token_for
):
    client.force_login(alice)
    url = reverse("recovery:ask", args=[web01.pk, web02.pk, "browse"])
    response = client.post(
        url, {"rp": points[0].snapshot_id, "path": "/home"}, HTTP_HX_REQUEST="true"
    )
    assert "Asking web-02" in response.content.decode()
    ((machine, task, kwargs),) = sent
    assert machine == "web-02" and task == "haven.agent.recovery.browse"
    assert kwargs["source_machine_id"] == str(web01.pk) and kwargs["path"] == "/home"
    request_id = kwargs["request_id"]
    answer_url = reverse("recovery:answer", args=[request_id])
    assert "Asking web-02" in client.get(answer_url, HTTP_HX_REQUEST="true").content.decode()

    body = {
        "ok": True,
        "result": {
            "recovery_point": {"id": points[0].snapshot_id},
            "path": "/home",
            "entries": [
                {"name": "secret-plans.txt", "path": "/home/secret-plans.txt", "kind": "file",
                 "size": 12, "mtime": "2025-01-02T03:04:05+00:00"},
                {"name": "alice", "path": "/home/alice", "kind": "dir", "size": None,
                 "mtime": "2025-01-02T03:04:05+00:00"},
            ],
        },
    }  # fmt: skip
    api = reverse("recovery_api:answer", args=[request_id])
    # Another machine cannot answer web-02's question.
    refused = client.post(
        api, json.dumps(body), content_type="application/json", **token_for(web01)
    )
    assert refused.status_code == 404
    ok = client.post(api, json.dumps(body), content_type="application/json", **token_for(web02))
    assert ok.status_code == 200
    page = client.get(answer_url, HTTP_HX_REQUEST="true").content.decode()
    assert "secret-plans.txt" in page and 'value="/home/alice"' in page
    assert "02 Jan 2025" in page
    # The names live in the cache only: no row of the database holds them.
    assert not Job.objects.filter(details__icontains="secret-plans").exists()


def test_an_answer_is_only_for_the_person_who_asked(client, alice, member, web01, sent):
    client.force_login(alice)
    client.post(reverse("recovery:ask", args=[web01.pk, web01.pk, "search"]), {"q": "report"})
    request_id = sent[0][2]["request_id"]
    assert sent[0][2]["pattern"] == "report" and sent[0][2]["source_machine_id"] == ""
    client.force_login(member(Role.OWNER))
    page = client.get(reverse("recovery:answer", args=[request_id])).content.decode()
    assert "expired" in page


def test_a_request_id_we_never_made_is_no_request_and_reaches_no_cache(client, alice, web01):
    client.force_login(alice)
    for junk in ("9" * 5000, "a" * 21, "bad id with spaces and ÿ"):
        page = client.get(reverse("recovery:answer", args=[junk]))
        assert page.status_code == 200 and "expired" in page.content.decode()
        assert services.answer_store(machine=web01, request_id=junk, body={"ok": True}) is False


def test_an_agent_error_says_what_to_do(client, alice, web01, web02, sent):
    client.force_login(alice)
    client.post(reverse("recovery:ask", args=[web01.pk, web02.pk, "versions"]), {"path": "/x"})
    request_id = sent[0][2]["request_id"]
    services.answer_store(
        machine=web02,
        request_id=request_id,
        body={"ok": False, "code": "passphrase_needed", "message": "…"},
    )
    page = client.get(reverse("recovery:answer", args=[request_id])).content.decode()
    assert "web-02 does not know web-01's passphrase" in page
    assert "haven-agent recovery-passphrase --from-machine 'web-01'" in page
    assert cache.get(f"recovery:answer:{request_id}")["code"] == "passphrase_needed"


def test_recover_starts_a_restore_job_on_the_target(client, alice, web01, web02, points, sent):
    client.force_login(alice)
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web02.pk]),
        {
            "rp": points[1].snapshot_id,
            "paths": ["/home/alice/docs", "/etc/hosts"],
            "location": "another",
            "folder": "/srv/restored",
            "on_conflict": "overwrite",
            "restore_permissions": "on",
        },
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("jobs:detail", args=[job.pk])
    assert job.operation == Job.Operation.RESTORE and job.machine == web02
    assert job.created_by == alice and job.status == Job.Status.QUEUED
    assert job.details == {
        "source_machine": str(web01.pk), "source_name": "web-01", "kind": "restore",
        "recovery_point": points[1].snapshot_id,
        "recovery_point_time": points[1].created_at.isoformat(), "items": 2,
        "location": "another", "on_conflict": "overwrite", "restore_permissions": True,
    }  # fmt: skip
    ((machine, task, kwargs),) = sent
    assert machine == "web-02" and task == "haven.agent.recovery.restore"
    assert kwargs == {
        "job_id": str(job.pk), "recovery_point": points[1].snapshot_id,
        "paths": ["/etc/hosts", "/home/alice/docs"], "target": "/srv/restored",
        "on_conflict": "overwrite", "restore_permissions": True,
        "source_machine_id": str(web01.pk),
    }  # fmt: skip
    page = client.get(response.url).content.decode()
    assert "Recovery of 2 items of web-01 onto web-02 started." in page


def test_recover_to_the_original_location_on_the_same_machine(client, alice, web01, points, sent):
    client.force_login(alice)
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]),
        {"rp": points[0].snapshot_id, "paths": ["/home"], "location": "original", "folder": "/x"},
        follow=True,
    )
    assert "Recovery of 1 item of web-01 onto web-01 started." in response.content.decode()
    kwargs = sent[0][2]
    assert kwargs["target"] == "/" and kwargs["source_machine_id"] == ""
    assert kwargs["on_conflict"] == "copy" and kwargs["restore_permissions"] is False


@pytest.mark.parametrize(
    "form, message",
    [
        ({"paths": ["/home"]}, "Choose a recovery point"),
        ({"rp": "0" * 32}, "Choose at least one file or folder"),
        ({"rp": "0" * 32, "paths": ["relative"]}, "Choose the files and folders"),
        ({"rp": "0" * 32, "paths": ["/a"], "location": "another", "folder": "x"}, "absolute"),
        ({"rp": "0" * 32, "paths": ["/a"], "on_conflict": "merge"}, "already exists"),
    ],
)
def test_recover_refuses_an_incomplete_form(client, alice, web01, points, sent, form, message):
    client.force_login(alice)
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]), form, follow=True
    )
    assert message in response.content.decode()
    assert not Job.objects.exists() and not sent


def test_a_refused_restore_shows_the_chosen_points_day_with_it_chosen(
    client, alice, web01, points, sent
):
    client.force_login(alice)
    oldest = points[0]
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]), {"rp": oldest.snapshot_id}
    )
    page = response.content.decode()
    assert response.status_code == 400 and "Choose at least one file or folder" in page
    assert f'data-day="{local_day(oldest)}" aria-current="date"' in page
    assert f'name="rp" value="{oldest.snapshot_id}" checked' in page


def test_a_reader_cannot_start_a_restore(client, member, web01, points, sent):
    client.force_login(member(Role.READER))
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]),
        {"rp": points[0].snapshot_id, "paths": ["/home"]},
    )
    assert response.status_code == 403 and not Job.objects.exists()


def test_system_state_is_restored_only_to_a_folder_that_is_not_root_or_etc(
    client, alice, web01, web02, points, sent
):
    client.force_login(alice)
    url = reverse("recovery:restore", args=[web01.pk, web02.pk])
    form = {"rp": points[0].snapshot_id, "paths": ["system-state"]}
    for extra, message in (
        ({"location": "original"}, "never over the running system"),
        ({"location": "another", "folder": ""}, "never over the running system"),
        ({"location": "another", "folder": "/"}, "cannot be restored into /:"),
        ({"location": "another", "folder": "/etc/"}, "cannot be restored into /etc/:"),
        ({"location": "another", "folder": "/srv/../etc/x"}, "cannot be restored into"),
        ({"location": "another", "folder": "srv"}, "absolute path"),
    ):
        response = client.post(url, {**form, **extra})
        assert response.status_code == 400, extra
        assert message in response.content.decode(), extra
    bad = client.post(url, {**form, "paths": ["system-state-x"], "location": "another",
                            "folder": "/srv/r"})  # fmt: skip
    assert bad.status_code == 400 and "Choose the files and folders" in bad.content.decode()
    assert not Job.objects.exists() and not sent

    response = client.post(url, {**form, "location": "another", "folder": "/srv/restored"})
    job = Job.objects.get()
    assert response.status_code == 302 and job.details["system_state"] is True
    assert sent[-1][2]["paths"] == ["system-state"] and sent[-1][2]["target"] == "/srv/restored"
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert '<dd data-field="items">System State</dd>' in page


def test_a_reader_cannot_restore_system_state(client, member, web01, points, sent):
    client.force_login(member(Role.READER))
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]),
        {"rp": points[0].snapshot_id, "paths": ["system-state"], "location": "another",
         "folder": "/srv/restored"},
    )  # fmt: skip
    assert response.status_code == 403 and not Job.objects.exists() and not sent


def test_browsing_shows_system_state_as_its_own_top_level_item(client, alice, web01, points, sent):
    client.force_login(alice)
    page = client.get(wizard_url(web01, web01)).content.decode()
    assert 'name="recover_mode" value="system_state" data-path="system-state"' in page
    client.post(
        reverse("recovery:ask", args=[web01.pk, web01.pk, "browse"]),
        {"rp": points[0].snapshot_id, "path": "system-state/etc"},
    )
    request_id = sent[-1][2]["request_id"]
    assert sent[-1][2]["path"] == "system-state/etc"
    entry = {"kind": "file", "size": 3, "mtime": "2025-01-02T03:04:05+00:00"}
    services.answer_store(machine=web01, request_id=request_id, body={"ok": True, "result": {
        "recovery_point": {"id": points[0].snapshot_id}, "path": "system-state/etc",
        "entries": [{**entry, "name": "hosts", "path": "system-state/etc/hosts"}]}})  # fmt: skip
    page = client.get(reverse("recovery:answer", args=[request_id])).content.decode()
    assert '"path": "system\\u002Dstate"}\' hx-target="#browser">System State</a>' in page  # crumb
    assert 'value="system-state/etc/hosts"' in page
    client.post(
        reverse("recovery:ask", args=[web01.pk, web01.pk, "browse"]),
        {"rp": points[0].snapshot_id, "path": "/"},
    )
    request_id = sent[-1][2]["request_id"]
    services.answer_store(machine=web01, request_id=request_id, body={"ok": True, "result": {
        "recovery_point": {"id": points[0].snapshot_id}, "path": "/", "entries": [
            {**entry, "kind": "dir", "name": "etc", "path": "/etc"},
            {**entry, "kind": "dir", "name": "system-state", "path": "system-state"}]}})  # fmt: skip
    page = client.get(reverse("recovery:answer", args=[request_id])).content.decode()
    assert 'aria-label="Select System State"' in page and 'aria-label="Select etc"' in page


def test_the_calendar_shows_the_newest_twelve_months_in_queries_constant_in_points(
    client, alice, web01, points
):
    client.force_login(alice)

    def render(url=None, **params) -> tuple[str, int]:
        headers = {"HTTP_HX_REQUEST": "true"} if url else {}
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url or wizard_url(web01, web01), params, **headers).content.decode()
        return page, len(queries)

    _, few = render()
    _, few_times = render(times_url(web01, web01), day=local_day(points[0]))
    # Two points a week for three years, and 48 on the newest day: only the newest twelve
    # months that hold points are in the calendar, and only the newest day's points are
    # choices (the page grows with days, not points).
    now = timezone.now().replace(microsecond=0)
    zone_ = zone(web01.time_zone)
    start_of_today = now.astimezone(zone_).replace(hour=0, minute=0, second=0)
    RecoveryPoint.objects.bulk_create(
        [RecoveryPoint(
            machine=web01, vault=web01.vault, snapshot_id=f"{i + 100:032x}",
            manifest_blob=f"snapshots/{i + 100:032x}", created_at=now - timedelta(days=3.5 * i + 5),
            tagged_for=now, kind=RecoveryPoint.Kind.SCHEDULED, logical_bytes=2048, file_count=1,
        ) for i in range(312)]
        + [RecoveryPoint(
            machine=web01, vault=web01.vault, snapshot_id=f"{i + 1000:032x}",
            manifest_blob=f"snapshots/{i + 1000:032x}",
            created_at=start_of_today + timedelta(days=1, minutes=30 * i), tagged_for=now,
            kind=RecoveryPoint.Kind.SCHEDULED, logical_bytes=2048, file_count=1,
        ) for i in range(48)]
    )  # fmt: skip
    page, many = render()
    assert many == few
    assert page.count('<table class="calendar"') == 12
    tomorrow = f"{start_of_today + timedelta(days=1):%Y-%m-%d}"
    assert f'data-day="{tomorrow}" aria-current="date"' in page
    shown = RecoveryPoint.objects.filter(machine=web01, snapshot_id__in=_values(page, "rp"))
    assert page.count('name="rp"') == shown.count() == 48
    assert {f"{p.created_at.astimezone(zone_):%Y-%m-%d}" for p in shown} == {tomorrow}
    in_calendar = set(
        re.findall(r'class="calendar-day has-points[^"]*" href="[^"]*" data-day="([0-9-]+)"', page)
    )
    oldest_day = min(in_calendar)
    assert {
        f"{p.created_at.astimezone(zone_):%Y-%m-%d}"
        for p in RecoveryPoint.objects.filter(machine=web01)
        if f"{p.created_at.astimezone(zone_):%Y-%m}" >= oldest_day[:7]
    } == in_calendar  # every day of the months shown holding points is marked
    assert "Scheduled · 2.0\xa0KB · 1 files" in page and "hx-post=" in page
    fragment, many_times = render(times_url(web01, web01), day=tomorrow)
    assert many_times == few_times and fragment.count('name="rp"') == 48


def _values(page: str, name: str) -> list[str]:
    return re.findall(rf'name="{name}" value="([0-9a-f]+)"', page)
