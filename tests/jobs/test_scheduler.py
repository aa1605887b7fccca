"""The beat tick: due policies since the last tick, once each, in the machine's zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.runtime import protocol
from jobs import services
from jobs.models import BackupPolicy, Job, ScheduledRun
from jobs.services import scheduler
from tests.jobs.conftest import make_machine, spec
from tests.support import builders

pytestmark = pytest.mark.django_db


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def nightly(machine, alice):
    """Daily at 01:30 Amsterdam time; the scheduler has looked up to 2024-10-26 12:00 UTC."""
    policy = services.policy_save(machine=machine, spec=spec(times=["01:30"]), user=alice)
    BackupPolicy.objects.filter(pk=policy.pk).update(scheduled_through=utc(2024, 10, 26, 12))
    return policy


def tick(at: datetime):
    return services.schedule_tick(now=at)


def test_a_due_policy_starts_one_scheduled_backup(nightly, sent):
    assert tick(utc(2024, 10, 26, 23, 29)) == []
    jobs = tick(utc(2024, 10, 26, 23, 30))  # 01:30 CEST on 27 October
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.trigger, job.scheduled_for) == (Job.Trigger.SCHEDULED, utc(2024, 10, 26, 23, 30))
    assert sent[-1][1] == protocol.BACKUP_TASK


def test_a_tick_run_twice_starts_nothing_twice(nightly):
    at = utc(2024, 10, 26, 23, 31)
    tick(at)
    BackupPolicy.objects.filter(pk=nightly.pk).update(scheduled_through=utc(2024, 10, 26, 12))
    assert tick(at) == []  # the unique (policy, scheduled_for) constraint holds
    assert ScheduledRun.objects.count() == 1
    assert Job.objects.count() == 1


def test_missed_ticks_are_caught_up_once(nightly):
    jobs = tick(utc(2024, 10, 30, 12))  # the portal was down for four nights
    assert len(jobs) == 1
    assert jobs[0].scheduled_for == utc(2024, 10, 30, 0, 30)  # the latest missed run
    assert tick(utc(2024, 10, 30, 12, 1)) == []


def ticks_across(start: datetime, end: datetime, *, by_minute: tuple[datetime, datetime]):
    """The beat's ticks from ``start`` to ``end`` (whole hours): one a minute from
    ``by_minute[0]`` to ``by_minute[1]``, where the clocks change, and one an hour elsewhere.
    A tick starts at most one run of a policy however long since the last (the latest
    missed), so an hourly tick still shows any extra run in its hour; only around the change
    is a tick every minute needed (a time met twice, a time that never comes)."""
    at = start
    while at < end:
        at += timedelta(minutes=1) if by_minute[0] <= at < by_minute[1] else timedelta(hours=1)
        yield at


def test_a_0130_backup_on_the_fall_back_night_runs_once(machine, alice):
    # 27 Oct 2024 in Amsterdam: 02:00-03:00 happens twice (00:00-01:00 and 01:00-02:00 UTC);
    # use 02:30 to land in it.
    policy = services.policy_save(machine=machine, spec=spec(times=["02:30"]), user=alice)
    BackupPolicy.objects.filter(pk=policy.pk).update(scheduled_through=utc(2024, 10, 26, 12))
    started = []
    window = (utc(2024, 10, 26, 22), utc(2024, 10, 27, 3))
    for at in ticks_across(utc(2024, 10, 26, 12), utc(2024, 10, 27, 12), by_minute=window):
        for job in tick(at):
            started.append(job.scheduled_for)
            Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
    assert started == [utc(2024, 10, 27, 0, 30)]  # 02:30 CEST, the first of the two


def test_a_time_that_does_not_exist_runs_when_the_clocks_jump(vault, alice):
    machine = make_machine(vault, "ny-01", time_zone="America/New_York")
    policy = services.policy_save(machine=machine, spec=spec(times=["02:30"]), user=alice)
    BackupPolicy.objects.filter(pk=policy.pk).update(scheduled_through=utc(2024, 3, 9, 12))
    started = []
    # 10 Mar 2024 in New York: 02:00 EST (07:00 UTC) jumps to 03:00 EDT; 02:30 never comes.
    window = (utc(2024, 3, 10, 5), utc(2024, 3, 10, 10))
    for at in ticks_across(utc(2024, 3, 9, 12), utc(2024, 3, 10, 12), by_minute=window):
        started += [job.scheduled_for for job in tick(at)]
    assert started == [utc(2024, 3, 10, 7, 0)]  # 03:00 EDT


def test_a_run_while_the_previous_backup_runs_is_recorded_as_failed(nightly, machine):
    running = services.backup_start(machine=machine)
    jobs = tick(utc(2024, 10, 26, 23, 30))
    assert jobs[0].status == Job.Status.FAILED
    assert "still running" in jobs[0].error
    assert str(running.pk) in jobs[0].error


def test_a_new_policy_does_not_run_retroactively(machine, alice):
    now = utc(2024, 10, 26, 23, 0)
    services.policy_save(machine=machine, spec=spec(times=["00:30"]), user=alice, now=now)
    assert tick(now + timedelta(minutes=1)) == []


def test_a_tick_over_a_fleet_with_nothing_due_asks_as_many_queries_for_30_machines_as_for_3(
    vault, alice
):
    """Thousands of machines, nearly all backed up and proven this period, some waiting for
    their first backup: the tick reads the policies, the period's drills and the first points
    once each and marks them all looked at in one write, rather than a write and a drill
    query or two per machine every minute."""
    machines = []

    def enrol(n):
        for i in range(n):
            m = builders.make_machine(vault=vault, name=f"fleet-{len(machines):03}")
            policy = services.policy_save(machine=m, spec=spec(times=["01:30"]), user=alice)
            BackupPolicy.objects.filter(pk=policy.pk).update(
                scheduled_through=utc(2024, 10, 26, 11)
            )
            machines.append(m)
            if i % 3 == 0:
                continue  # no backup yet: no point, no drill
            Job.objects.create(  # this month's drill, passed
                vault=vault,
                machine=m,
                operation=Job.Operation.DRILL,
                status=Job.Status.COMPLETED,
                scheduled_for=utc(2024, 10, 20, 23, 30),
                details={"kind": "drill", "source_machine": str(m.pk), "source_name": m.name},
            )

    def queries_of_a_tick(at):
        with CaptureQueriesContext(connection) as seen:
            assert tick(at) == []
        marks = BackupPolicy.objects.filter(machine__in=machines)
        assert set(marks.values_list("scheduled_through", flat=True)) == {at}
        return len(seen)

    enrol(3)
    few = queries_of_a_tick(utc(2024, 10, 26, 12))
    enrol(27)
    assert queries_of_a_tick(utc(2024, 10, 26, 12, 1)) == few <= 5


def test_a_tick_that_ends_after_a_later_one_leaves_the_later_mark(nightly):
    later = utc(2024, 10, 26, 12, 5)
    BackupPolicy.objects.filter(pk=nightly.pk).update(scheduled_through=later)
    scheduler._looked_at([nightly.pk], now=utc(2024, 10, 26, 12, 4))
    nightly.refresh_from_db()
    assert nightly.scheduled_through == later
