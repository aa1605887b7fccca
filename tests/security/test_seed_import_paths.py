"""A seed import reads files on the portal's host: a Contributor types the path, and the
seed's header (written on a machine that may be compromised) names the files. Neither may
make the portal read outside the seed folder, through a link, or outside
HAVEN_SEED_IMPORT_ROOT."""

from __future__ import annotations

import hashlib
import json

import pytest

from agents.runtime import seed
from agents.runtime.engine import layout
from jobs import services
from jobs.models import Job
from jobs.services import seeding
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine
from vaults import storage

pytestmark = pytest.mark.django_db
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent

CONFIG = json.dumps({"format": "haven-repository", "version": 1, "id": "c" * 32}).encode()
POINT = "d" * 32
PACK = "data/ee/" + "e" * 32


def _seed(folder, machine, blobs: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    rows = []
    for name, data in blobs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        rows.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    header = {
        "format": seed.SEED_FORMAT,
        "version": seed.SEED_VERSION,
        "vault": {"id": str(machine.vault_id), "name": machine.vault.name},
        "machine": {"id": str(machine.pk), "name": machine.name},
        "repository_id": "c" * 32,
        "recovery_point_id": POINT,
        "packs": ["e" * 32],
        "stats": {},
        "blobs": rows,
    }
    (folder / seed.SEED_HEADER).write_text(json.dumps(header))


def test_a_pack_in_the_seed_that_is_a_symlink_to_a_host_file_is_not_read(vault, tmp_path):
    machine = make_machine(vault)
    with storage.primary_account().store(machine.container) as store:
        store.put(layout.CONFIG_BLOB, CONFIG)
    secret = tmp_path / "portal-secret"
    secret.write_bytes(b"the portal's secret")
    folder = tmp_path / "root" / "seed"
    _seed(folder, machine, {"config": CONFIG, PACK: b"x", layout.manifest_blob(POINT): b"m"})
    # The header was written for the file; the file is then swapped for a link to the secret
    # with the same hash in the header: only O_NOFOLLOW stops the read.
    (folder / PACK).unlink()
    (folder / PACK).symlink_to(secret)
    header = json.loads((folder / seed.SEED_HEADER).read_text())
    for row in header["blobs"]:
        if row["name"] == PACK:
            row.update(
                size=secret.stat().st_size, sha256=hashlib.sha256(secret.read_bytes()).hexdigest()
            )
    (folder / seed.SEED_HEADER).write_text(json.dumps(header))
    job = seeding.seed_import_run(job=services.seed_import_start(machine=machine, folder=folder))
    assert job.status == Job.Status.FAILED
    assert f"{PACK} cannot be read from the seed" in job.error
    with storage.primary_account().store(machine.container) as store:
        assert not store.exists(PACK)


def test_a_seed_folder_reached_through_a_link_or_dotdot_is_refused(settings, tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "inside" / "deeper").symlink_to(tmp_path / "outside")
    settings.HAVEN_SEED_IMPORT_ROOT = str(root)
    for raw in ("escape", "inside/deeper", "../outside", "inside/../../outside",
                str(tmp_path / "outside"), f"{root}/escape"):  # fmt: skip
        with pytest.raises(services.SeedRefused):
            services.seed_path_resolve(raw)
    assert services.seed_path_resolve("inside") == root.resolve() / "inside"


def test_a_machine_cannot_report_on_or_finish_its_own_seed_import(client, vault, tmp_path):
    from tests.jobs.conftest import token_for

    machine = make_machine(vault)
    _seed(tmp_path / "seed", machine, {"config": CONFIG, layout.manifest_blob(POINT): b"m"})
    job = services.seed_import_start(machine=machine, folder=tmp_path / "seed")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_for(machine)}"}
    for what, body in [
        ("start", {}),
        ("progress", {"phase": "import", "bytes_done": 1}),
        ("result", {"status": "completed", "recovery_point_id": POINT, "pack_ids": []}),
    ]:
        answer = client.post(
            f"/api/agent/jobs/{job.pk}/{what}/",
            data=json.dumps(body),
            content_type="application/json",
            **auth,
        )
        assert answer.status_code == 404, (what, answer.content)
    assert client.get(f"/api/agent/jobs/{job.pk}/", **auth).status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and not job.progress


def test_only_a_contributor_can_take_a_running_import_over(
    client, vault, tmp_path, settings, member, charlie, _jobs_env
):
    """A press of Import while a worker copies hands the job to a new run, which takes the
    import over: an outsider (404), a Reader or a Backup Operator (403) cannot, and the
    copying run stays the import's."""
    from portal.models import Role

    machine = make_machine(vault)
    root = tmp_path / "seeds"
    _seed(root / "web-01", machine, {"config": CONFIG, layout.manifest_blob(POINT): b"m"})
    settings.HAVEN_SEED_IMPORT_ROOT = str(root)
    job = services.seed_import_start(machine=machine, folder=root / "web-01")
    copying = seeding._take_over(job)  # a portal worker's run, copying
    url = f"/jobs/machines/{machine.pk}/seeding/"
    for who, code in [(charlie, 404), (member(Role.READER), 403),
                      (member(Role.BACKUP_OPERATOR), 403)]:  # fmt: skip
        client.force_login(who)
        assert client.post(url, {"path": "web-01"}).status_code == code
        job.refresh_from_db()
        assert job.details[seeding.RUN_KEY] == copying and len(_jobs_env) == 1
    client.force_login(member(Role.CONTRIBUTOR))
    answer = client.post(url, {"path": "web-01"})
    assert answer.status_code == 302 and answer["Location"] == f"/jobs/{job.pk}/"
    assert _jobs_env == [("seed_import", (str(job.pk),))] * 2  # the same job, queued again
