"""Pages: owner, member and outsider (alice, bob, charlie); constant queries on the list."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services
from jobs.models import BackupPolicy, Job
from portal.models import Role
from tests.jobs.conftest import stored_point

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def test_job_page_renders_the_stored_progress(as_alice, machine, policy):
    job = services.backup_start(machine=machine)
    services.job_record_progress(
        job=job,
        event={
            "phase": "backing_up",
            "files_done": 5,
            "files_total": 20,
            "bytes_done": 2048,
            "bytes_total": 4096,
            "rate_bps": 1024,
            "eta_s": 2,
            "current": "/srv/data/x",
        },
    )
    page = as_alice.get(f"/jobs/{job.pk}/").content.decode()
    assert "In progress" in page and "50%" in page and "5 of 20" in page and "/srv/data/x" in page
    assert f"watch=job:{job.pk}" in page
    fragment = as_alice.get(f"/jobs/{job.pk}/?fragment=live").content.decode()
    assert fragment.lstrip().startswith("<section") and "50%" in fragment


def test_outsider_gets_404_and_reader_cannot_cancel(client, charlie, member, machine, policy):
    job = services.backup_start(machine=machine)
    client.force_login(charlie)
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    client.force_login(member(Role.READER))
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403


def test_cancel_from_the_page(as_alice, machine, policy):
    job = services.backup_start(machine=machine)
    response = as_alice.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_back_up_now_confirmation_says_which_retention_applies(as_alice, machine, policy):
    page = as_alice.get(f"/jobs/machines/{machine.pk}/backup-now/").content.decode()
    assert "Retain backup till" in page and "Kept as daily until" in page
    assert "backs up daily" in page
    fragment = as_alice.get(
        f"/jobs/machines/{machine.pk}/backup-now/?fragment=retention&retain_until=2999-12-31",
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "retain till until 01 Jan 3000" in fragment


def test_back_up_now_starts_a_job_and_a_second_request_links_to_it(as_alice, machine, policy):
    response = as_alice.post(f"/jobs/machines/{machine.pk}/backup-now/")
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    again = as_alice.post(f"/jobs/machines/{machine.pk}/backup-now/")
    assert again.status_code == 409
    body = again.content.decode()
    assert "already running" in body and f"/jobs/{job.pk}/" in body
    assert Job.objects.count() == 1


def test_back_up_now_with_retain_till(as_alice, machine, policy):
    as_alice.post(f"/jobs/machines/{machine.pk}/backup-now/", {"retain_until": "2999-01-31"})
    assert str(Job.objects.get().retain_until) == "2999-01-31"


def test_backup_operator_may_back_up_but_not_edit_the_policy(client, member, machine, policy):
    client.force_login(member(Role.BACKUP_OPERATOR))
    assert client.post(f"/jobs/machines/{machine.pk}/backup-now/").status_code == 302
    response = client.post(f"/jobs/machines/{machine.pk}/policy/", {"items": "/x"})
    assert response.status_code == 403


def test_policy_editor_names_each_failing_rule_next_to_its_field(as_alice, machine):
    response = as_alice.post(
        f"/jobs/machines/{machine.pk}/policy/",
        {
            "items": "relative",
            "frequency": "daily",
            "times": ["00:00"],
            "daily_enabled": "on",
            "daily_days": "10000",
        },
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-error-for="items"' in page and "not an absolute path" in page
    assert 'data-error-for="daily_days"' in page and "9,999" in page
    assert not BackupPolicy.objects.exists()


def test_policy_editor_saves_and_shows_the_preview_and_drift(as_alice, machine, sent):
    response = as_alice.post(
        f"/jobs/machines/{machine.pk}/policy/",
        {
            "items": "/srv/data",
            "frequency": "daily",
            "times": ["00:00", "18:00"],
            "daily_enabled": "on",
            "daily_days": "7",
            "weekly_enabled": "on",
            "weekly_weekdays": "5",
            "weekly_weeks": "4",
            "initial_backup": "online",
        },
    )
    assert response.status_code == 302
    policy = BackupPolicy.objects.get(machine=machine)
    assert policy.times == ["00:00", "18:00"] and policy.retention["weekly"]["weeks"] == 4
    page = as_alice.get(f"/jobs/machines/{machine.pk}/policy/").content.decode()
    assert "Preview: what this policy keeps" in page and "recovery points" in page
    assert "Not applied" in page  # the agent has not confirmed version 1 yet
    preview = as_alice.post(
        f"/jobs/machines/{machine.pk}/policy/preview/",
        {
            "items": "/srv/data",
            "frequency": "daily",
            "times": ["00:00"],
            "daily_enabled": "on",
            "daily_days": "7",
        },
    ).content.decode()
    assert "Over the coming year the schedule makes <strong>365</strong>" in preview


def test_recovery_points_backup_items_and_alerts_pages(as_alice, machine, policy):
    job = services.backup_start(machine=machine)
    stored_point(machine, "ab" * 16)
    services.job_finish(
        job=job, status="completed", snapshot_id="ab" * 16, stats={"added_bytes": 2048}
    )
    failed = services.backup_start(machine=machine)
    services.job_finish(job=failed, status="failed", error="Storage said no.")
    points = as_alice.get(f"/jobs/machines/{machine.pk}/recovery-points/").content.decode()
    assert "Ad hoc" in points and "daily" in points and "2.0\xa0KB" in points
    items = as_alice.get(f"/jobs/vaults/{machine.vault_id}/backup-items/").content.decode()
    assert (
        "web-01" in items
        and f"/jobs/machines/{machine.pk}/backup-now/" in items
        and "Failed" in items
    )
    alerts = as_alice.get(f"/jobs/vaults/{machine.vault_id}/alerts/").content.decode()
    assert "Critical" in alerts and "Storage said no." in alerts


def test_jobs_list_filters_and_counts(as_alice, machine, policy):
    done = services.backup_start(machine=machine)
    services.job_finish(job=done, status="completed")
    services.backup_start(machine=machine)
    page = as_alice.get("/jobs/").content.decode()
    assert (
        'data-status="completed"><a href="?range=7d&status=completed"><span class="tile-count">1</span>'
        in page
    )
    only = as_alice.get("/jobs/?status=queued").content.decode()
    assert only.count('id="job-row-') == 1


def make_jobs(vault, machine, count: int) -> None:
    now = timezone.now()
    statuses = ["completed", "failed", "warning", "cancelled"]
    batch = [
        Job(
            id=uuid.uuid4(),
            vault=vault,
            machine=machine,
            operation="backup",
            status=statuses[i % 4],
            trigger="scheduled",
        )
        for i in range(count)
    ]
    Job.objects.bulk_create(batch, batch_size=5000)
    # auto_now_add ignores given values: spread the times afterwards.
    Job.objects.update(created_at=now - timedelta(minutes=1))


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_jobs_list_renders_in_queries_constant_in_its_jobs(as_alice, machine, vault):
    # (The query count is what a row more would change; bench.load times the list with
    # 100,000 jobs: docs/benchmarks.md.)
    make_jobs(vault, machine, 30)
    few = count_queries(as_alice, "/jobs/?range=all")
    make_jobs(vault, machine, 4_000 - 30)
    many = count_queries(as_alice, "/jobs/?range=all")
    assert many == few
    assert count_queries(as_alice, "/jobs/?range=all&page=15&status=failed") == few


def _item_row(page: str, machine) -> str:
    start = page.index(f'<tr data-machine="{machine.pk}">')
    return page[start : page.index("</tr>", start)]


def test_backup_items_rows_offer_the_actions_each_state_allows(
    client, alice, member, vault, machine, policy
):
    from tests.jobs.conftest import make_machine, spec

    now = timezone.now()
    stopped, deleted, bare = (
        make_machine(vault, name) for name in ("db-01", "files-01", 'a<b>&"c"')
    )
    for m in (stopped, deleted):
        services.policy_save(machine=m, spec=spec(), user=alice)
    P = BackupPolicy.Protection
    BackupPolicy.objects.filter(machine=stopped).update(protection=P.STOPPED, stopped_at=now)
    BackupPolicy.objects.filter(machine=deleted).update(
        protection=P.SOFT_DELETED, deleted_at=now, purge_after=now + timedelta(days=10)
    )
    url = f"/jobs/vaults/{vault.pk}/backup-items/"
    client.force_login(alice)
    page = client.get(url).content.decode()
    back = f"?next={url}"

    row = _item_row(page, machine)  # protected
    assert f'href="/jobs/machines/{machine.pk}/backup-now/" data-action="backup-now"' in row
    assert f'href="/jobs/machines/{machine.pk}/protection/stop/{back}"' in row
    assert ">Stop backup</a>" in row and f">Version {policy.version}</a>" in row
    row = _item_row(page, stopped)
    assert "backup-now" not in row and ">Delete backup data</a>" in row
    assert f'action="/jobs/machines/{stopped.pk}/protection/resume/"' in row
    assert 'name="csrfmiddlewaretoken"' in row and f'name="next" value="{url}"' in row
    row = _item_row(page, deleted)
    assert "10 days left</span> before the data is removed" in row
    assert f'action="/jobs/machines/{deleted.pk}/protection/undelete/"' in row
    assert "stop-backup" not in row and "backup-now" not in row
    row = _item_row(page, bare)  # no policy; its name escaped
    assert "a&lt;b&gt;&amp;&quot;c&quot;" in row and 'a<b>&"c"' not in page
    assert ">Set policy</a>" in row and 'data-action="backup-now"' in row

    client.force_login(member(Role.READER))
    page = client.get(url).content.decode()
    assert "data-action=" not in page and "csrfmiddlewaretoken" not in page.split("<tbody>")[1]


def test_backup_items_renders_in_queries_constant_in_its_machines(as_alice, vault, machine):
    from tests.jobs.conftest import make_machine

    url = f"/jobs/vaults/{vault.pk}/backup-items/"
    few = count_queries(as_alice, url)
    for n in range(8):
        m = make_machine(vault, f"host-{n}")
        services.job_finish(job=services.backup_start(machine=m), status="failed")
    page = as_alice.get(url).content.decode()
    assert page.count("<tr data-machine=") == 9 and page.count(">Failed</span>") == 8
    assert count_queries(as_alice, url) == few


def test_a_jobs_list_row_is_the_row_its_vault_watchers_are_pushed(as_alice, vault, policy):
    from jobs.services import live
    from tests.jobs.conftest import make_machine

    machine = make_machine(vault, 'db<1>&"x"')
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    services.job_record_progress(
        job=job, event={"phase": "backing_up", "bytes_done": 1024, "bytes_total": 4096}
    )
    page = as_alice.get("/jobs/").content.decode()
    start = page.index(f'<tr id="job-row-{job.pk}">')
    row = page[start : page.index("</tr>", start) + 5]
    assert 'data-field="percent">25%</span>' in row and ">In progress</span>" in row
    assert "db&lt;1&gt;&amp;&quot;x&quot;" in row and "db<1>" not in page
    assert f'<a href="/jobs/{job.pk}/">' in row and "(scheduled)" not in row
    job.refresh_from_db()
    pushed = dict(live.job_fragments(job))[live.group_for_vault(vault.pk)]
    assert pushed.strip() == row.replace(">", ' hx-swap-oob="true">', 1)
