"""Two starts of the same stored-data job at once (a double press, two tabs, a press and the
scheduler's run) queue one job: Compact, Verify, a restore drill and a seed's import each look
for the one on its way and make theirs under the machine's fence (``pruning.repository_fence``).

The starts are made to meet: the fence is held on a thread of its own while both starts
begin, then let go. A start that looked before it waited for the fence would find nothing,
and both would queue."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from jobs import services
from jobs.models import Job
from tests.jobs import test_seeding
from tests.jobs.conftest import make_machine
from tests.jobs.test_compact_start import with_point
from tests.jobs.test_progress_hotpath import FenceHeld

pytestmark = [pytest.mark.servers, pytest.mark.django_db(transaction=True)]
offline = test_seeding.offline  # (the fixture: a machine's seed exported into a folder)

STARTS = {
    Job.Operation.COMPACT: (services.compact_start, services.CompactAlreadyRunning),
    Job.Operation.VERIFY: (services.verify_start, services.VerifyRefused),
    Job.Operation.DRILL: (services.drill_start, services.DrillRefused),
}


def _together(start, machine) -> list:
    """``start(machine=...)`` on two threads while the machine's fence is held; what each
    returned or raised."""
    outcomes: list = []

    def run():
        try:
            outcomes.append(start(machine=machine))
        except Exception as exc:  # (the refusal, checked by the caller)
            outcomes.append(exc)
        finally:
            connection.close()

    with FenceHeld(machine):
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both have begun: without the fence they would both have looked
    for t in threads:
        t.join(30)
    return outcomes


@pytest.mark.parametrize("operation", list(STARTS), ids=lambda op: op.label)
def test_two_starts_at_once_queue_one_job(vault, sent, operation):
    machine = with_point(make_machine(vault))
    start, refusal = STARTS[operation]
    outcomes = _together(start, machine)
    jobs = [o for o in outcomes if isinstance(o, Job)]
    refused = [o for o in outcomes if not isinstance(o, Job)]
    assert len(jobs) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], refusal)
    assert Job.objects.active().filter(operation=operation).count() == 1


def test_two_imports_of_one_seed_at_once_make_one_job(machine, offline, settings):
    # (An unfinished import of the same seed is resumed: both starts get the same job.)
    settings.HAVEN_SEED_IMPORT_ROOT = str(offline["root"])

    def start(*, machine):
        return services.seed_import_start(machine=machine, folder=offline["folder"], enqueue=False)

    outcomes = _together(start, machine)
    assert all(isinstance(o, Job) for o in outcomes), outcomes
    assert len({o.pk for o in outcomes}) == 1
    assert Job.objects.filter(operation=Job.Operation.IMPORT).count() == 1
