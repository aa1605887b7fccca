"""Garbage collection never races a backup. The engine deduplicates against every pack it finds
when a backup starts, those an interrupted run left included; had collection deleted such a
pack while a backup of the machine was in flight, the backup would commit a recovery point
that cannot be restored.

The interleaving tests run real backups: the agent's backup job (``run_backup_job``, the real
engine) against the machine's real container (a local directory, or Azurite in the servers
pass), reporting to the real agent API through Django's test client. Collection runs while a
backup is in flight, then the engine's verify reads every committed point back."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agents.runtime import engine
from agents.runtime.blobstore import StorageUnavailable
from agents.runtime.engine import layout
from agents.runtime.jobs.backup import run_backup_job
from agents.runtime.portal_api import PortalRefused
from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine, spec, stored_point, token_for
from vaults import storage

# The agent posts progress from a thread of its own: it must see committed rows.
pytestmark = pytest.mark.django_db(transaction=True)
# The jobs app's fixtures: agent tasks and portal tasks recorded, pushes captured.
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent

PASSPHRASE = "correct horse battery staple 42"
FAST_KDF = {"n": 2**10, "r": 8, "p": 1}
MiB = 1 << 20


class ApiPortal:
    """The agent's ``PortalClient`` interface over Django's test client: the real agent API.
    ``on_progress`` runs (once) before the first progress report is delivered."""

    def __init__(self, client, machine):
        self.client = client
        self.auth = {"HTTP_AUTHORIZATION": f"Bearer {token_for(machine)}"}
        self.on_progress = None
        self.result_answer: int | None = None

    def _answer(self, response):
        if response.status_code >= 400:
            body = response.json()
            raise PortalRefused(response.status_code, body["error"], body["message"])
        return response.json()

    def get(self, path: str) -> dict:
        return self._answer(self.client.get(f"/api/agent/{path}", **self.auth))

    def post(self, path: str, payload: dict | None = None) -> dict:
        if path.endswith("/progress/") and self.on_progress is not None:
            hook, self.on_progress = self.on_progress, None
            hook(payload or {})
        response = self.client.post(
            f"/api/agent/{path}",
            data=json.dumps(payload or {}),
            content_type="application/json",
            **self.auth,
        )
        if path.endswith("/result/"):
            self.result_answer = response.status_code
        return self._answer(response)


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


def write_random(folder: Path, name: str, size: int, seed: int) -> None:
    folder.joinpath(name).write_bytes(random.Random(seed).randbytes(size))


@pytest.fixture
def machine(vault, alice, data):
    machine = make_machine(vault)
    services.policy_save(machine=machine, spec=spec(items=[str(data)]), user=alice)
    with storage.primary_account().store(machine.container) as store:
        engine.Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    return machine


def back_up(client, machine, tmp_path, *, on_progress=None) -> Job:
    """One backup of ``machine`` as its agent runs it; returns the job after its result."""
    job = services.backup_start(machine=machine)
    portal = ApiPortal(client, machine)
    portal.on_progress = on_progress
    account = storage.primary_account()
    run_backup_job(
        str(job.pk),
        portal=portal,
        open_store=lambda: account.store(machine.container),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "agent-cache",
        sleep=lambda s: None,
        max_per_second=100,
        heartbeat=0.02,
        pack_size=MiB,
    )
    job.refresh_from_db()
    return job


class NoManifest:
    """The machine's store, except that the manifest cannot be written: the backup uploads
    all its packs, then fails as a crash or a lost connection would stop it."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, name, data):
        if name.startswith(layout.SNAPSHOTS_PREFIX):
            raise StorageUnavailable("the connection dropped")
        return self.inner.put(name, data)


def interrupted_backup(client, machine, tmp_path) -> Job:
    """A backup that uploaded its packs and never committed its manifest: they stay,
    referenced by no point, for the next run to reuse."""
    job = services.backup_start(machine=machine)
    account = storage.primary_account()
    run_backup_job(
        str(job.pk),
        portal=ApiPortal(client, machine),
        open_store=lambda: NoManifest(account.store(machine.container)),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "agent-cache",
        sleep=lambda s: None,
        pack_size=MiB,
    )
    job.refresh_from_db()
    return job


def packs_in(machine) -> set[str]:
    with storage.primary_account().store(machine.container) as store:
        return {layout.pack_id_of(b.name) for b in store.list(layout.DATA_PREFIX)}


def referenced(machine) -> set[str]:
    packs: set[str] = set()
    for ids in RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).values_list(
        "pack_ids", flat=True
    ):
        packs.update(ids)
    return packs


def verify_every_point(machine) -> engine.VerifyReport:
    """Every point the portal recorded has its manifest and packs in storage, and the
    engine's verify, on a fresh index (as on another machine), reads every manifest back."""
    with storage.primary_account().store(machine.container) as store:
        report = engine.run_verify(engine.Repository.open(store, PASSPHRASE))
        manifests = {b.name for b in store.list(layout.SNAPSHOTS_PREFIX)}
    present = packs_in(machine)
    for point in RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True):
        assert point.manifest_blob in manifests
        assert set(point.pack_ids) <= present, f"point {point.snapshot_id} lost packs"
    return report


def later(settings) -> timezone.datetime:
    """A moment at which every pack written in this test is past the grace period."""
    return timezone.now() + timedelta(hours=3 * settings.HAVEN_GC_GRACE_HOURS)


@pytest.fixture
def interrupted(client, machine, data, tmp_path):
    """One completed backup, then more data and a backup interrupted after it uploaded it:
    the repository holds packs that no recovery point references."""
    for i in range(2):
        write_random(data, f"first-{i}.bin", MiB, seed=i)
    first = back_up(client, machine, tmp_path)
    assert first.status == Job.Status.COMPLETED, first.error
    for i in range(12):
        write_random(data, f"second-{i}.bin", MiB, seed=100 + i)
    failed = interrupted_backup(client, machine, tmp_path)
    assert failed.status == Job.Status.FAILED and "dropped" in failed.error
    left = packs_in(machine) - referenced(machine)
    assert left, "the interrupted backup left no pack; the test proves nothing"
    return left


def test_collection_while_a_backup_is_running_deletes_no_pack_it_may_reuse(
    client, machine, interrupted, tmp_path, settings
):
    deleted: list[str] = []

    def collect(event):
        # The backup has started and listed data/: the interrupted run's packs are in its
        # index. Collection runs now, with every pack past the grace period.
        deleted.extend(services.packs_collect(machine=machine, now=later(settings)))

    job = back_up(client, machine, tmp_path, on_progress=collect)
    assert job.status == Job.Status.COMPLETED, job.error
    point = RecoveryPoint.objects.get(job=job)
    assert set(point.pack_ids) & interrupted, "the backup reused the interrupted run's packs"
    report = verify_every_point(machine)
    assert report.ok, report.message
    assert report.recovery_points_checked == 2
    assert deleted == []
    # Collection once nothing is in flight removes only what no point references.
    services.packs_collect(machine=machine, now=later(settings))
    assert verify_every_point(machine).ok


def test_a_backup_that_starts_between_two_deletions_stops_the_collection(
    client, machine, interrupted, tmp_path, settings
):
    """Collection has read the references and listed the packs; between two of its
    deletions a whole backup runs, reusing the packs still to be deleted."""
    account = storage.primary_account()
    made: list[Job] = []

    class Store:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def delete(self, name):
            self.inner.delete(name)
            if not made:
                made.append(back_up(client, machine, tmp_path))

    with account.store(machine.container) as inner:
        deleted = services.packs_collect(machine=machine, now=later(settings), store=Store(inner))
    (job,) = made
    assert job.status == Job.Status.COMPLETED, job.error
    report = verify_every_point(machine)
    assert report.ok, report.message
    assert len(deleted) == 1, "collection went on deleting after the backup made its point"


def test_a_point_made_after_collection_restores_on_another_machine(
    client, machine, data, interrupted, tmp_path, settings
):
    """Collection removes the interrupted run's packs; the next backup stores their chunks
    again. Older index deltas still name the removed packs, so an index loaded without the
    agent's cache must prefer the copies that are stored."""
    services.packs_collect(machine=machine, now=later(settings))
    assert not packs_in(machine) & interrupted
    job = back_up(client, machine, tmp_path)
    assert job.status == Job.Status.COMPLETED, job.error
    report = verify_every_point(machine)
    assert report.ok, report.message
    target = tmp_path / "elsewhere"
    with storage.primary_account().store(machine.container) as store:
        restored = engine.run_restore(
            engine.Repository.open(store, PASSPHRASE),
            recovery_point=job.recovery_point.snapshot_id,
            target=target,
        )
    assert restored.status == "completed", restored.message
    for original in sorted(data.iterdir()):
        copy = target / str(original).lstrip("/")
        assert copy.read_bytes() == original.read_bytes(), original.name


def test_a_recently_interrupted_backup_fences_its_machine(machine, settings):
    """A backup the portal failed (its agent went quiet) may still be running on the machine,
    and the next run resumes from its packs: within the grace period nothing is collected."""
    left_over = "e1" * 16
    stored_point(machine, "e0" * 16, [left_over])
    now = later(settings)
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    services.job_fail(job=job, reason="The agent stopped reporting.", now=now - timedelta(hours=1))
    assert services.packs_collect(machine=machine, now=now) == []
    assert left_over in packs_in(machine)
    grace = timedelta(hours=settings.HAVEN_GC_GRACE_HOURS)
    Job.objects.filter(pk=job.pk).update(ended_at=now - grace - timedelta(hours=1))
    assert services.packs_collect(machine=machine, now=now) == [layout.pack_blob(left_over)]


@pytest.mark.parametrize("status", [Job.Status.QUEUED, Job.Status.WAITING, Job.Status.RUNNING])
def test_a_machine_with_a_backup_in_flight_is_skipped(machine, settings, status):
    left_over = "e1" * 16
    stored_point(machine, "e0" * 16, [left_over])
    job = services.backup_start(machine=machine)
    Job.objects.filter(pk=job.pk).update(status=status)
    assert services.packs_collect(machine=machine, now=later(settings)) == []
    assert left_over in packs_in(machine)


def test_a_grace_period_below_the_safe_minimum_is_refused_at_start(tmp_path):
    env = {
        **os.environ,
        "HAVEN_GC_GRACE_HOURS": "1",
        "HAVEN_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert done.returncode != 0
    assert "HAVEN_GC_GRACE_HOURS" in done.stderr and "at least 24" in done.stderr
