"""Live progress at fleet rate: every report is kept where pages read it and pushed, the
Job row is written at phase changes, at least every PROGRESS_WRITE_SECONDS and at the end,
and a page reload shows what the socket showed."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Job
from jobs.services.jobs import PROGRESS_WRITE_SECONDS
from tests.jobs.conftest import token_for

pytestmark = pytest.mark.django_db


def report(files_done: int, *, phase: str = "backing_up", **more) -> dict:
    return {
        "type": "progress",
        "phase": phase,
        "files_done": files_done,
        "files_total": 1000,
        "bytes_done": files_done * 1_000_000,
        "bytes_total": 1_000_000_000,
        "stored_bytes": files_done * 400_000,
        "rate_bps": 50_000_000,
        "eta_s": 12,
        "current": f"/srv/data/file-{files_done}.bin",
        **more,
    }


@pytest.fixture
def job(machine, policy):
    return services.backup_start(machine=machine)


def post(client, machine, job, body):
    return client.post(
        f"/api/agent/jobs/{job.pk}/progress/",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(machine)}",
    )


def field(html: str, name: str) -> str:
    found = re.search(rf'data-field="{name}"[^>]*>([^<]*)<', html)
    assert found, name
    return found.group(1)


def test_a_reload_shows_what_the_socket_showed(
    client, machine, job, alice, pushes, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, machine, job, report(10)).status_code == 200
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, machine, job, report(420)).status_code == 200
    # The second report, seconds after the first, is not in the row yet ...
    job.refresh_from_db()
    assert job.progress["files_done"] == 10
    # ... but the socket showed it, and a reload shows the same.
    socket = json.loads(dict(pushes)[f"job.{job.pk}"])
    assert socket["fields"]["files"] == "420 of 1,000"
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    for name in ("files", "bytes", "percent", "current", "transferred", "rate"):
        assert field(page, name) == socket["fields"][name], name
    listed = client.get("/jobs/").content.decode()
    assert field(listed, "percent") == "42%" == socket["fields"]["percent"]


def test_steady_progress_is_one_small_message_for_both_groups(
    client, machine, job, pushes, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        post(client, machine, job, report(1))
    pushes.clear()
    with django_capture_on_commit_callbacks(execute=True):
        post(client, machine, job, report(2))
    assert sorted(g for g, _ in pushes) == sorted([f"job.{job.pk}", f"vault.{job.vault_id}"])
    (_, first), (_, second) = pushes
    assert first == second and len(first) < 600
    assert json.loads(first)["job_progress"] == str(job.pk)


def test_the_row_is_written_at_least_every_few_seconds(job):
    start = timezone.now()
    services.job_record_progress(job=job, event=report(1), now=start)
    job = Job.objects.get(pk=job.pk)
    assert job.progress["files_done"] == 1
    services.job_record_progress(job=job, event=report(2), now=start + timedelta(seconds=1))
    job = Job.objects.get(pk=job.pk)
    assert job.progress["files_done"] == 1 and job.last_report_at == start
    later = start + timedelta(seconds=PROGRESS_WRITE_SECONDS + 1)
    services.job_record_progress(job=job, event=report(3), now=later)
    job = Job.objects.get(pk=job.pk)
    assert job.progress["files_done"] == 3 and job.last_report_at == later
    assert job.bytes_transferred == 3 * 400_000


def test_a_new_phase_is_written_at_once(job):
    start = timezone.now()
    services.job_record_progress(job=job, event=report(5), now=start)
    job = Job.objects.get(pk=job.pk)
    services.job_record_progress(
        job=job, event=report(5, phase="finalizing"), now=start + timedelta(seconds=1)
    )
    assert Job.objects.get(pk=job.pk).progress["phase"] == "finalizing"


def test_the_last_report_is_in_the_row_at_the_end(job):
    start = timezone.now()
    services.job_record_progress(job=job, event=report(1), now=start)
    job = Job.objects.get(pk=job.pk)
    services.job_record_progress(job=job, event=report(999), now=start + timedelta(seconds=1))
    assert Job.objects.get(pk=job.pk).progress["files_done"] == 1
    services.job_finish(job=Job.objects.get(pk=job.pk), status="failed", error="disk gone")
    job = Job.objects.get(pk=job.pk)
    assert job.status == Job.Status.FAILED
    assert job.progress["files_done"] == 999 and job.bytes_transferred == 999 * 400_000


@pytest.mark.parametrize(
    "value",
    [0, 1, 1023, 1024, 1075, 1048575, 1048576, 1153433, 10**9, 1 << 40, (1 << 50) + 1, -5, "12"],
)
def test_a_pushed_size_reads_as_the_template_shows_it(value):
    from django.template.defaultfilters import filesizeformat
    from django.utils.translation import get_language

    from jobs.services.live import _number_style, _size

    language = get_language()
    style = _number_style(language)
    assert _size(value, style, language) == _size(value, style, language) == filesizeformat(value)


def test_with_the_cache_away_a_report_goes_to_the_row_and_the_page_shows_it(
    client, machine, job, alice, settings, django_capture_on_commit_callbacks
):
    # A real Redis client against a port nothing listens on: the cache is unreachable, as
    # when Redis restarts. The report is answered, kept in the row, and the page shows it.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2},
        }
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, machine, job, report(10)).status_code == 200
        assert post(client, machine, job, report(420)).status_code == 200
    job.refresh_from_db()
    assert job.progress["files_done"] == 420
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200
    assert field(page.content.decode(), "files") == "420 of 1,000"
    listed = client.get("/jobs/")
    assert listed.status_code == 200 and field(listed.content.decode(), "percent") == "42%"
