"""Two starts of the same stored-data job at once (a double press, two tabs, a press and the
scheduler's run) queue one job: Compact, Verify, a restore drill and a seed's import each look
for the one on its way and make theirs under the machine's fence (``pruning.repository_fence``).

The starts are made to meet: the fence is held on a thread of its own while both starts
begin, then let go. A start that looked before it waited for the fence would find nothing,
and both would queue."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from django.db import connection

from jobs import services
from jobs.models import Job
from jobs.services import compaction, drills, pruning, seeding, verify
from portal.models import Role
from tests.jobs import test_seeding
from tests.jobs.conftest import make_machine, spec
from tests.jobs.test_compact_start import with_point
from tests.jobs.test_progress_hotpath import FenceHeld

pytestmark = [pytest.mark.servers, pytest.mark.django_db(transaction=True)]
offline = test_seeding.offline  # (the fixture: a machine's seed exported into a folder)

STARTS = {
    Job.Operation.COMPACT: (services.compact_start, services.CompactAlreadyRunning),
    Job.Operation.VERIFY: (services.verify_start, services.VerifyRefused),
    Job.Operation.DRILL: (services.drill_start, services.DrillRefused),
}


@pytest.fixture
def at_the_fence(monkeypatch):
    """Counts the starts that reach the machine's fence in the four services (each made to
    wait there by ``FenceHeld``), so the fence is let go only once both are waiting."""
    arrived = threading.Semaphore(0)

    @contextlib.contextmanager
    def counted(*machine_ids):
        arrived.release()
        with pruning.repository_fence(*machine_ids):
            yield

    for module in (compaction, verify, drills, seeding):
        monkeypatch.setattr(module, "repository_fence", counted, raising=False)
    return arrived


def _together(arrived, starts: list, fenced) -> list:
    """Each of ``starts`` (no-argument calls) on a thread of its own while ``fenced``'s
    fence is held, let go once they have all reached it; what each returned or raised."""
    outcomes: list = []

    def run(start):
        try:
            outcomes.append(start())
        except Exception as exc:  # (a refusal or a deadlock, checked by the caller)
            outcomes.append(exc)
        finally:
            connection.close()

    with FenceHeld(fenced):
        threads = [threading.Thread(target=run, args=(start,)) for start in starts]
        for t in threads:
            t.start()
        for _ in starts:  # (the code before this change never reached it: 5 s each, then go)
            arrived.acquire(timeout=5)
        time.sleep(0.2)  # from the count to the lock: no query between them
    for t in threads:
        t.join(30)
    return outcomes


@pytest.mark.parametrize("operation", list(STARTS), ids=lambda op: op.label)
def test_two_starts_at_once_queue_one_job(vault, sent, at_the_fence, operation):
    machine = with_point(make_machine(vault))
    start, refusal = STARTS[operation]
    outcomes = _together(at_the_fence, [lambda: start(machine=machine)] * 2, machine)
    jobs = [o for o in outcomes if isinstance(o, Job)]
    refused = [o for o in outcomes if not isinstance(o, Job)]
    assert len(jobs) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], refusal)
    assert Job.objects.active().filter(operation=operation).count() == 1


def test_two_imports_of_one_seed_at_once_make_one_job(machine, offline, settings, at_the_fence):
    # (An unfinished import of the same seed is resumed: both starts get the same job.)
    settings.HAVEN_SEED_IMPORT_ROOT = str(offline["root"])

    def start():
        return services.seed_import_start(machine=machine, folder=offline["folder"], enqueue=False)

    outcomes = _together(at_the_fence, [start, start], machine)
    assert all(isinstance(o, Job) for o in outcomes), outcomes
    assert len({o.pk for o in outcomes}) == 1
    assert Job.objects.filter(operation=Job.Operation.IMPORT).count() == 1


def test_drills_of_two_machines_on_each_other_at_once_both_start(vault, sent, member, at_the_fence):
    # Each drill holds its source's fence and commits a job of the runner's: were the two
    # rows locked in the order the drills name them, the two would wait on each other
    # (PostgreSQL's "deadlock detected", a 500 for one of the people who pressed).
    contributor = member(Role.CONTRIBUTOR)
    first, second = (with_point(make_machine(vault, name)) for name in ("app-01", "app-02"))
    for source, runner in ((first, second), (second, first)):
        services.policy_save(machine=source, spec=spec(), user=contributor)
        found, problems = services.drill_settings_parse(
            {"drill_machine": str(runner.pk)}, machine=source
        )
        assert problems == {}
        services.drill_settings_save(policy=source.backup_policy, found=found, user=contributor)
    outcomes = _together(
        at_the_fence,
        [lambda: services.drill_start(machine=first), lambda: services.drill_start(machine=second)],
        first if first.pk < second.pk else second,  # (the row each locks first)
    )
    assert all(isinstance(o, Job) for o in outcomes), outcomes
    assert {(o.machine_id, o.details["source_machine"]) for o in outcomes} == {
        (second.pk, str(first.pk)),
        (first.pk, str(second.pk)),
    }
