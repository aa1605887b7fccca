"""Compact jobs end to end: the agent's compact job (``run_compact_job``, the real engine)
against the machine's real container, reporting to the real agent API through Django's test
client; the portal checks the report, moves the references and deletes the old packs. After
each, every kept point restores byte for byte, with the agent's index cache and without it
(as on another machine)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

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


class Crash(BaseException):
    """The agent's process ending at a kill point: nothing after it runs, no result is
    posted (the runner catches ``Exception`` only), and the job's journal stays."""


def compact(client, machine, tmp_path, *, crash=None, on_progress=None) -> Job:
    job = services.compact_start(machine=machine)
    portal = ApiPortal(client, machine)
    portal.on_progress = on_progress
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
def history(client, machine, data, tmp_path, settings) -> dict[str, dict]:
    """Four backups of a tree that changes each time, then retention removes two points
    and collection the packs no kept point references: the packs left are partly dead.
    Returns the kept points' snapshot ids -> the tree each holds."""
    rng = random.Random(5)
    trees = {}
    for _round in range(4):
        for n in range(3):
            data.joinpath(f"f{n}.bin").write_bytes(rng.randbytes(90 * KiB))
        data.joinpath("stable.bin").write_bytes(random.Random(1).randbytes(150 * KiB))
        job = back_up(client, machine, tmp_path)
        assert job.status == Job.Status.COMPLETED, job.error
        trees[job.recovery_point.snapshot_id] = {
            p.name: p.read_bytes() for p in sorted(data.iterdir())
        }
    with storage.primary_account().store(machine.container) as store:
        for point in RecoveryPoint.objects.filter(machine=machine).order_by("pk")[:2]:
            store.delete(point.manifest_blob)
            RecoveryPoint.objects.filter(pk=point.pk).update(removed_at=later(settings))
            del trees[point.snapshot_id]
    services.packs_collect(machine=machine, now=later(settings))
    return trees


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


def test_a_compact_job_deletes_the_dead_share_and_every_point_restores(
    client,
    machine,
    data,
    history,
    tmp_path,
):
    before, packs_before = stored_bytes(machine), packs_in(machine)
    job = compact(client, machine, tmp_path)

    assert job.status == Job.Status.COMPLETED, job.error
    assert job.operation == Job.Operation.COMPACT
    assert "deleted" in job.error and "old packs" in job.error
    assert job.progress.get("phase") == "compacting"
    assert stored_bytes(machine) < before
    gone = packs_before - packs_in(machine)
    assert gone and not gone & referenced(machine)
    restore_every_point(machine, history, data, tmp_path / "cached", tmp_path / "agent-cache")
    restore_every_point(machine, history, data, tmp_path / "elsewhere", None)
    # the work is done: the next run rewrites nothing
    again = compact(client, machine, tmp_path)
    assert again.status == Job.Status.COMPLETED and "No pack needs compacting" in again.error


def test_a_compaction_that_dies_before_its_report_leaves_every_point_restorable(
    client,
    machine,
    data,
    history,
    tmp_path,
):
    """The agent dies after its new packs are uploaded and indexed, before its report: the
    repository holds two copies of every moved chunk and the portal deleted nothing; every
    kept point restores, and the next job finishes the work. (The engine's tests kill the
    agent's process with SIGKILL at each of the kill points: tests/runtime/engine/
    test_compact.py.)"""
    packs_before = packs_in(machine)

    def die(at: str) -> None:
        if at == "after_index":
            raise Crash(at)

    with pytest.raises(Crash):
        compact(client, machine, tmp_path, crash=die)
    assert packs_before <= packs_in(machine)  # nothing deleted
    restore_every_point(machine, history, data, tmp_path / "killed", tmp_path / "agent-cache")

    Job.objects.filter(operation=Job.Operation.COMPACT).update(status=Job.Status.FAILED)
    job = compact(client, machine, tmp_path)
    assert job.status == Job.Status.COMPLETED, job.error
    assert packs_before - packs_in(machine), "the next run deleted no old pack"
    restore_every_point(machine, history, data, tmp_path / "rerun", tmp_path / "agent-cache")
    restore_every_point(machine, history, data, tmp_path / "elsewhere", None)


def test_a_backup_during_the_compaction_keeps_the_packs_it_uses(
    client,
    machine,
    data,
    history,
    tmp_path,
    settings,
):
    """A backup runs while the agent compacts: it deduplicates against the packs being
    rewritten and records its point before the compaction's report arrives. The packs its
    point names stay; the next compaction moves its references and deletes them."""
    made: list[Job] = []

    def backup_meanwhile(event):
        made.append(back_up(client, machine, tmp_path))

    job = compact(client, machine, tmp_path, on_progress=backup_meanwhile)
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
