"""Compact jobs end to end: the agent's compact job (``run_compact_job``, the real engine)
against the machine's real container, reporting to the real agent API through Django's test
client; the portal checks the report, moves the references and deletes the old packs. After
each, every kept point restores byte for byte, with the agent's index cache and without it
(as on another machine)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from agents.runtime import engine
from agents.runtime.engine import layout
from agents.runtime.jobs.compact import run_compact_job
from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.security import test_gc_fence as gc_fence
from tests.security.test_gc_fence import PASSPHRASE, ApiPortal, back_up, later, packs_in, referenced
from vaults import storage

pytestmark = pytest.mark.django_db(transaction=True)
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent
# The collection tests' machine (its repository made) and its data folder.
machine, data = gc_fence.machine, gc_fence.data

KiB = 1024


class Portal(ApiPortal):
    """The agent API as the agent calls it, from the job's thread and its progress sink's;
    a call from another thread than the test's closes that thread's database connection
    (left open, it keeps the test database from being dropped)."""

    def post(self, path: str, payload: dict | None = None) -> dict:
        try:
            return super().post(path, payload)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()


class Crash(BaseException):
    """The agent's process ending at a kill point: nothing after it runs, no result is
    posted (the runner catches ``Exception`` only), and the job's journal stays."""


def compact(client, machine, tmp_path, *, crash=None, while_rewriting=None) -> Job:
    """One Compact job as the agent runs it; ``while_rewriting`` runs once the agent has
    read every manifest and rewrites packs (its first ``compacting`` progress report)."""
    job = services.compact_start(machine=machine)
    portal = Portal(client, machine)

    def hook(event):
        if event.get("phase") != "compacting":
            portal.on_progress = hook  # not yet: wait for the next report
            return
        while_rewriting(event)

    portal.on_progress = hook if while_rewriting is not None else None
    account = storage.primary_account()
    run_compact_job(
        str(job.pk),
        portal=portal,
        open_store=lambda: account.store(machine.container),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "agent-cache",
        sleep=lambda s: None,
        max_per_second=100,
        heartbeat=0.02,
        pack_size=256 * KiB,
        crash=crash,
    )
    job.refresh_from_db()
    return job


def stored_bytes(machine) -> int:
    with storage.primary_account().store(machine.container) as store:
        return sum(b.size for b in store.list(layout.DATA_PREFIX))


@pytest.fixture
def history(machine, data, tmp_path, settings) -> dict[str, dict]:
    """Three backups of a tree that changes each time (the engine's, recorded as the portal
    records a backup's point), then retention removes the first and collection the packs no
    kept point references: the packs left are partly dead. Returns the kept points'
    snapshot ids -> the tree each holds."""
    rng = random.Random(5)
    trees = {}
    with storage.primary_account().store(machine.container) as store:
        repo = engine.Repository.open(store, PASSPHRASE)
        for _round in range(3):
            for n in range(3):
                data.joinpath(f"f{n}.bin").write_bytes(rng.randbytes(90 * KiB))
            data.joinpath("stable.bin").write_bytes(random.Random(1).randbytes(150 * KiB))
            made = engine.run_backup(
                repo,
                sources=[data],
                cache_dir=tmp_path / "agent-cache",
                pack_size=1024 * KiB,  # a backup's files share a pack: partly dead later
                workers=1,
            )
            now = timezone.now()
            RecoveryPoint.objects.create(
                machine=machine,
                vault=machine.vault,
                snapshot_id=made.recovery_point,
                manifest_blob=layout.manifest_blob(made.recovery_point),
                created_at=now,
                tagged_for=now,
                kind=RecoveryPoint.Kind.ADHOC,
                pack_ids=made.packs,
            )
            trees[made.recovery_point] = {p.name: p.read_bytes() for p in sorted(data.iterdir())}
        first = RecoveryPoint.objects.filter(machine=machine).order_by("pk").first()
        store.delete(first.manifest_blob)
    RecoveryPoint.objects.filter(pk=first.pk).update(removed_at=later(settings))
    del trees[first.snapshot_id]
    services.packs_collect(machine=machine, now=later(settings))
    return trees


def sum_unreferenced(machine) -> int:
    keep = referenced(machine)
    with storage.primary_account().store(machine.container) as store:
        return sum(
            b.size for b in store.list(layout.DATA_PREFIX) if layout.pack_id_of(b.name) not in keep
        )


def restore_every_point(machine, trees, data: Path, target: Path, cache: Path | None) -> None:
    with storage.primary_account().store(machine.container) as store:
        repo = engine.Repository.open(store, PASSPHRASE)
        repo.load_index(cache)
        for snapshot, tree in trees.items():
            out = target / snapshot
            result = engine.run_restore(repo, recovery_point=snapshot, target=out)
            assert result.status == "completed", result.message
            copy = out / str(data).lstrip("/")
            assert {p.name: p.read_bytes() for p in sorted(copy.iterdir())} == tree
    present = packs_in(machine)
    for point in RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True):
        assert set(point.pack_ids) <= present, f"point {point.snapshot_id} lost packs"


def test_a_compaction_that_dies_before_its_report_and_the_next_that_finishes(
    client,
    machine,
    data,
    history,
    tmp_path,
):
    """The agent dies after its new packs are uploaded and indexed, before its report: the
    repository holds two copies of every moved chunk and the portal deleted nothing; every
    kept point restores. The next Compact job finishes the work: the dead share is deleted,
    and every kept point restores byte for byte, with the agent's index cache and without
    it. (The engine's tests kill the agent's process with SIGKILL at each kill point:
    tests/runtime/engine/test_compact.py.)"""
    before, packs_before = stored_bytes(machine), packs_in(machine)

    def die(at: str) -> None:
        if at == "after_index":
            raise Crash(at)

    with pytest.raises(Crash):
        compact(client, machine, tmp_path, crash=die)
    assert packs_before < packs_in(machine)  # new packs, and nothing deleted
    restore_every_point(machine, history, data, tmp_path / "killed", tmp_path / "agent-cache")

    Job.objects.filter(operation=Job.Operation.COMPACT).update(status=Job.Status.FAILED)
    job = compact(client, machine, tmp_path)
    assert job.status == Job.Status.COMPLETED, job.error
    assert job.operation == Job.Operation.COMPACT
    assert "deleted" in job.error and "old pack" in job.error
    assert job.progress.get("phase") == "compacting"
    gone = packs_before - packs_in(machine)
    assert gone and not gone & referenced(machine)
    # the killed run's copies are referenced by no point: collection takes them later
    assert stored_bytes(machine) - sum_unreferenced(machine) < before
    restore_every_point(machine, history, data, tmp_path / "cached", tmp_path / "agent-cache")
    restore_every_point(machine, history, data, tmp_path / "elsewhere", None)


def test_a_backup_during_the_compaction_keeps_the_packs_it_uses(
    client,
    machine,
    data,
    history,
    tmp_path,
    settings,
):
    """A backup runs while the agent rewrites packs, after it read every manifest: a file of
    an expired point comes back, so the backup reuses chunks the compaction judged dead and
    did not copy, and records its point before the compaction's report arrives. The packs
    its point names stay (deleting them would lose that file); every point restores."""
    made: list[Job] = []

    def backup_meanwhile(event):
        # a file of the expired point comes back: its chunks are dead, still stored in a
        # pack being compacted, and the backup reuses them
        data.joinpath("back.bin").write_bytes(random.Random(5).randbytes(90 * KiB))
        made.append(back_up(client, machine, tmp_path))

    job = compact(client, machine, tmp_path, while_rewriting=backup_meanwhile)
    (backup,) = made
    assert backup.status == Job.Status.COMPLETED, backup.error
    assert job.status == Job.Status.COMPLETED, job.error
    history[backup.recovery_point.snapshot_id] = {
        p.name: p.read_bytes() for p in sorted(data.iterdir())
    }
    assert "kept because" in job.error
    restore_every_point(machine, history, data, tmp_path / "raced", tmp_path / "agent-cache")

    again = compact(client, machine, tmp_path)
    assert again.status == Job.Status.COMPLETED, again.error
    services.packs_collect(machine=machine, now=later(settings))
    restore_every_point(machine, history, data, tmp_path / "after", None)
