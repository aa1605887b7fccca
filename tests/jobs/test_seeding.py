"""Offline seeding (jobs/services/seeding.py, agents/runtime/seed.py): a machine whose policy
says Offline backs up nothing over the network until its seed is imported; the seed is
exported with the engine into a folder, imported (hashes checked, only what is missing
copied, resumable), refused for another machine, and the next online backup reuses it.

Runs in both passes: the machine's container is a local folder, then an Azurite container."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil

import pytest

from agents.runtime import engine, seed
from agents.runtime.blobstore import StorageError
from agents.runtime.engine import layout
from jobs import services
from jobs.models import Job, RecoveryPoint
from jobs.services import seeding
from tests.jobs.conftest import make_machine, spec
from tests.runtime.engine.conftest import FAST_KDF, PASSPHRASE
from vaults import storage

pytestmark = pytest.mark.django_db


def _identity(machine) -> dict:
    return {
        "vault_id": str(machine.vault_id),
        "vault_name": machine.vault.name,
        "machine_id": str(machine.pk),
        "machine_name": machine.name,
    }


def _files(root, *, count=12, size=256 * 1024) -> int:
    rng = random.Random(15)
    for i in range(count):
        folder = root / f"d{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:02}.bin").write_bytes(rng.randbytes(size))
    return count * size


class Interrupted(Exception):
    pass


@pytest.fixture
def offline(machine, alice, tmp_path):
    """web-01 with a repository in its container, 3 MiB of files, an Offline policy, and
    its seed exported under the import root."""
    data = tmp_path / "data"
    total = _files(data)
    with storage.primary_account().store(machine.container) as container:
        engine.Repository.init(container, PASSPHRASE, kdf=FAST_KDF)
        services.policy_save(
            machine=machine, spec=spec(items=[str(data)], initial_backup="offline"), user=alice
        )
        root = tmp_path / "seeds"
        result, header = seed.seed_export(
            container=container,
            staging=root / "web-01",
            passphrase=PASSPHRASE,
            items=[str(data)],
            excludes=[],
            identity=_identity(machine),
            cache_dir=tmp_path / "cache",
        )
    assert result.logical_bytes == total
    return {"data": data, "root": root, "folder": root / "web-01", "header": header}


def test_an_offline_seed_is_imported_resumably_and_the_next_backup_uploads_almost_nothing(
    machine, offline, settings, tmp_path
):
    settings.HAVEN_SEED_IMPORT_ROOT = str(offline["root"])
    # Nothing goes over the network while the seed is awaited.
    with pytest.raises(services.SeedPending):
        services.backup_start(machine=machine)
    folder = services.seed_path_resolve("web-01")
    assert folder == offline["folder"].resolve()

    # Interrupted after two blobs, then started again: the same job, only the rest copied.
    job = services.seed_import_start(machine=machine, folder=folder)
    copied: list[str] = []

    def interrupt(name):
        copied.append(name)
        if len(copied) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        seeding.seed_import_run(job=job, after_blob=interrupt)
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING
    assert services.seed_import_start(machine=machine, folder=folder).pk == job.pk
    rest: list[str] = []
    job = seeding.seed_import_run(job=Job.objects.get(pk=job.pk), after_blob=rest.append)
    assert job.status == Job.Status.COMPLETED, job.error
    assert not set(copied) & set(rest)
    wanted = {b["name"] for b in offline["header"]["blobs"]} - {"config"}
    wanted = {n for n in wanted if not n.startswith(layout.KEYS_PREFIX)}
    assert set(copied) | set(rest) == wanted
    assert rest[-1] == layout.manifest_blob(offline["header"]["recovery_point_id"])
    point = RecoveryPoint.objects.get(machine=machine)
    assert point.job_id == job.pk
    assert point.snapshot_id == offline["header"]["recovery_point_id"]
    assert sorted(point.pack_ids) == offline["header"]["packs"]
    assert job.progress["bytes_done"] == job.progress["bytes_total"]

    # The first online backup reuses the seeded packs: under 1% of the data goes up.
    with storage.primary_account().store(machine.container) as container:
        before = {b.name: b.size for b in container.list("")}
        repo = engine.Repository.open(container, PASSPHRASE)
        result = engine.run_backup(
            repo, sources=[str(offline["data"])], cache_dir=tmp_path / "online-cache"
        )
        uploaded = sum(b.size for b in container.list("") if b.name not in before)
    assert result.recovery_point and result.logical_bytes == 12 * 256 * 1024
    assert uploaded < 0.01 * result.logical_bytes, uploaded
    assert services.backup_start(machine=machine).operation == Job.Operation.BACKUP


def test_import_pressed_again_while_it_copies_takes_over_and_the_first_run_stops(machine, offline):
    """Two portal workers never copy one seed side by side: the run started later (Import
    pressed again, the same job queued again) takes over, and the first stops after the
    blob it was copying, at its next look at the job (once a second; here, a clock that
    moves two seconds a blob), without failing or ending the job; what each copied stays."""
    job = services.seed_import_start(machine=machine, folder=offline["folder"])
    first: list[str] = []
    second: list[str] = []

    def second_copies_one(name):
        second.append(name)
        raise Interrupted  # (still the import's run when the first one looks again)

    def press_again(name):
        first.append(name)
        if len(first) == 2:
            again = services.seed_import_start(machine=machine, folder=offline["folder"])
            assert again.pk == job.pk
            with pytest.raises(Interrupted):
                seeding.seed_import_run(
                    job=Job.objects.get(pk=job.pk), after_blob=second_copies_one
                )

    clock = itertools.count(step=2).__next__
    with pytest.raises(seeding.ImportTakenOver):
        seeding.seed_import_run(job=job, after_blob=press_again, clock=clock)
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and not job.error

    rest: list[str] = []
    job = seeding.seed_import_run(job=job, after_blob=rest.append)
    assert job.status == Job.Status.COMPLETED, job.error
    assert not set(rest) & set(first + second)
    wanted = {b["name"] for b in offline["header"]["blobs"]} - {"config"}
    assert set(first + second + rest) == {n for n in wanted if not n.startswith(layout.KEYS_PREFIX)}
    assert RecoveryPoint.objects.filter(machine=machine).count() == 1


class _FailingSecondPut:
    """The machine's container, whose second create fails after ``before_failing()``."""

    def __init__(self, store, before_failing):
        self.store, self.before_failing, self.puts = store, before_failing, 0

    def list(self, prefix):
        return self.store.list(prefix)

    def get(self, name):
        return self.store.get(name)

    def put(self, name, data):
        self.puts += 1
        if self.puts == 2:
            self.before_failing()
            raise StorageError("connection reset by peer")
        self.store.put(name, data)


def test_a_run_taken_over_does_not_fail_the_import_when_its_storage_then_fails(machine, offline):
    job = services.seed_import_start(machine=machine, folder=offline["folder"])

    def press_again():
        with pytest.raises(Interrupted):
            seeding.seed_import_run(job=Job.objects.get(pk=job.pk), after_blob=_interrupt)

    with (
        storage.primary_account().store(machine.container) as own,
        pytest.raises(seeding.ImportTakenOver),
    ):
        seeding.seed_import_run(job=job, store=_FailingSecondPut(own, press_again))
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and not job.error
    assert seeding.seed_import_run(job=job).status == Job.Status.COMPLETED


def _interrupt(name):
    raise Interrupted


def test_a_seed_of_another_machine_is_refused_saying_whose_it_is(vault, offline, alice):
    other = make_machine(vault, "db-02")
    with pytest.raises(services.SeedRefused, match="machine 'web-01' in vault 'vault-one'"):
        services.seed_import_start(machine=other, folder=offline["folder"])
    assert not Job.objects.filter(machine=other).exists()


def test_a_damaged_blob_fails_the_import_and_is_not_copied(machine, offline, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(offline["folder"], damaged)
    pack = next(b["name"] for b in offline["header"]["blobs"] if b["name"].startswith("data/"))
    raw = bytearray((damaged / pack).read_bytes())
    raw[100] ^= 1
    (damaged / pack).chmod(0o600)
    (damaged / pack).write_bytes(bytes(raw))
    job = seeding.seed_import_run(job=services.seed_import_start(machine=machine, folder=damaged))
    assert job.status == Job.Status.FAILED
    assert f"{pack} on the seed disk does not match its hash" in job.error
    with storage.primary_account().store(machine.container) as container:
        assert not container.exists(pack)
    assert not RecoveryPoint.objects.filter(machine=machine).exists()


def test_a_path_outside_the_import_root_or_through_a_link_is_refused(offline, settings, tmp_path):
    root = offline["root"]
    settings.HAVEN_SEED_IMPORT_ROOT = ""
    with pytest.raises(services.SeedRefused, match="HAVEN_SEED_IMPORT_ROOT"):
        services.seed_path_resolve("web-01")
    settings.HAVEN_SEED_IMPORT_ROOT = str(root)
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    for raw, message in [
        ("../elsewhere", "'..'"),
        (f"{root}/../elsewhere", "'..'"),
        (str(tmp_path / "elsewhere"), "must be inside"),
        ("link", "symbolic link"),
        ("missing", "not a folder"),
        ("web-01\x00", "Enter"),
    ]:
        with pytest.raises(services.SeedRefused, match=re.escape(message)):
            services.seed_path_resolve(raw)


def test_a_header_naming_a_blob_outside_the_engine_layout_or_too_big_is_refused(machine, offline):
    path = offline["folder"] / seed.SEED_HEADER
    original = json.loads(path.read_text())
    for extra, message in [
        ({"name": "../../etc/passwd", "size": 1, "sha256": "0" * 64}, "not the engine's"),
        ({"name": "index/" + "a" * 32, "size": 1 << 40, "sha256": "0" * 64}, "impossible size"),
    ]:
        path.write_text(json.dumps({**original, "blobs": [*original["blobs"], extra]}))
        with pytest.raises(services.SeedRefused, match=message):
            services.seed_import_start(machine=machine, folder=offline["folder"])
    assert not Job.objects.filter(machine=machine).exists()


def test_an_import_no_portal_worker_starts_fails_saying_so(machine, offline, settings):
    from datetime import timedelta

    from django.utils import timezone

    job = services.seed_import_start(machine=machine, folder=offline["folder"])
    later = timezone.now() + timedelta(minutes=settings.HAVEN_JOB_AGENT_WAIT_MINUTES + 1)
    services.jobs_sweep(now=later)
    services.jobs_sweep(now=later)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("The portal's worker did not start this seed import")


def test_the_seeding_page_by_role_and_hostile_paths(
    client, machine, offline, settings, member, charlie, alice
):
    """Reader sees the state, cannot import; a Contributor imports; an outsider sees nothing;
    a path outside the import root is a 400 with the reason, never a 500."""
    from portal.models import Role

    settings.HAVEN_SEED_IMPORT_ROOT = str(offline["root"])
    url = f"/jobs/machines/{machine.pk}/seeding/"
    client.force_login(charlie)
    assert client.get(url).status_code == 404
    assert client.post(url, {"path": "web-01"}).status_code == 404
    client.force_login(member(Role.READER))
    page = client.get(url)
    assert page.status_code == 200 and b"Waiting for the seed disk" in page.content
    assert b'data-action="import-seed"' not in page.content
    assert client.post(url, {"path": "web-01"}).status_code == 403
    client.force_login(member(Role.BACKUP_OPERATOR))
    assert client.post(url, {"path": "web-01"}).status_code == 403
    client.force_login(member(Role.CONTRIBUTOR))
    for hostile in ("../../etc", "/etc", "web-01/../../x"):
        answer = client.post(url, {"path": hostile})
        assert answer.status_code == 400 and b"seed-error" in answer.content, hostile
    assert not Job.objects.filter(operation=Job.Operation.IMPORT).exists()
    answer = client.post(url, {"path": "web-01"})
    job = Job.objects.get(machine=machine, operation=Job.Operation.IMPORT)
    assert answer.status_code == 302 and answer["Location"] == f"/jobs/{job.pk}/"
    seeding.seed_import_run(job=job)
    client.force_login(alice)
    page = client.get(f"/machines/{machine.pk}/")
    assert b"Imported</span> on" in page.content, page.content.decode()[:3000]


def test_manage_py_seed_import_imports_and_says_whose_an_unknown_seed_is(
    machine, offline, tmp_path
):
    from django.core.management import CommandError, call_command

    header_path = offline["folder"] / seed.SEED_HEADER
    original = header_path.read_text()
    stranger = json.loads(original)
    stranger["machine"] = {"id": "00000000-0000-0000-0000-000000000000", "name": "far-away"}
    header_path.write_text(json.dumps(stranger))
    with pytest.raises(CommandError, match="machine 'far-away' in vault 'vault-one'"):
        call_command("seed_import", str(offline["folder"]))
    header_path.write_text(original)
    call_command("seed_import", str(offline["folder"]))
    job = Job.objects.get(machine=machine, operation=Job.Operation.IMPORT)
    assert job.status == Job.Status.COMPLETED
    assert RecoveryPoint.objects.filter(machine=machine, job=job).exists()


def test_manage_py_seed_import_taken_over_says_which_job_carries_on(machine, offline, monkeypatch):
    """The command's run, taken over by Import pressed on the Seeding page while it copies,
    stops with an error naming the job that carries on; the job is neither failed nor
    ended, and a later run finishes it."""
    from django.core.management import CommandError, call_command

    run = seeding.seed_import_run
    copied: list[str] = []

    def press_import(name):
        copied.append(name)
        if len(copied) == 1:
            again = services.seed_import_start(machine=machine, folder=offline["folder"])
            with pytest.raises(Interrupted):
                run(job=Job.objects.get(pk=again.pk), after_blob=_interrupt)

    def the_commands_run(*, job):
        return run(job=job, after_blob=press_import, clock=itertools.count(step=2).__next__)

    monkeypatch.setattr(seeding, "seed_import_run", the_commands_run)
    with pytest.raises(CommandError, match=r"Another run of this import took it over \(job "):
        call_command("seed_import", str(offline["folder"]))
    job = Job.objects.get(machine=machine, operation=Job.Operation.IMPORT)
    assert job.status == Job.Status.RUNNING and not job.error
    assert run(job=job).status == Job.Status.COMPLETED
