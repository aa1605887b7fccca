"""A compromised machine's compaction report must not make the portal delete a pack a kept
recovery point still needs. The portal cannot read the chunks, so it checks what it can
(jobs/services/compaction.py): the packs named are stored with their sizes, every object of
an old pack is accounted for (its count from the pack's own trailer), every object said to be
moved is the same bytes in the new pack, and only points recorded before the job started
have their references moved. Each attack posts its report to the real agent API as the
machine; the pack it targets must still be there, and the references unchanged."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from django.utils import timezone

from agents.runtime.engine import layout
from agents.runtime.engine.crypto import Sealer
from agents.runtime.engine.format import PackBuilder
from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs.conftest import make_machine, token_for
from vaults import storage

pytestmark = pytest.mark.django_db


@pytest.fixture
def machine(vault, no_broker):
    return make_machine(vault)


def put_pack(machine, objects: list[bytes]) -> tuple[str, int]:
    """A pack as the engine lays it out (objects back to back, sealed header, its length);
    the portal reads only sizes, the trailer and object bytes."""
    builder = PackBuilder()
    for obj in objects:
        builder.add(os.urandom(32), obj, len(obj))
    pack_id = os.urandom(16)
    data = bytes(builder.finish(Sealer(os.urandom(32)), pack_id))
    with storage.primary_account().store(machine.container) as store:
        store.put(layout.pack_blob(pack_id), data)
    return pack_id.hex(), len(data)


def point(machine, packs: list[str]) -> RecoveryPoint:
    now = timezone.now()
    snapshot = uuid.uuid4().hex
    return RecoveryPoint.objects.create(
        machine=machine,
        vault=machine.vault,
        snapshot_id=snapshot,
        manifest_blob=layout.manifest_blob(snapshot),
        created_at=now,
        tagged_for=now,
        kind=RecoveryPoint.Kind.ADHOC,
        pack_ids=packs,
    )


def stored(machine, pack: str) -> bool:
    with storage.primary_account().store(machine.container) as store:
        return store.exists(layout.pack_blob(pack))


@pytest.fixture
def repo(machine):
    """An old pack of three objects, the live two of them copied (honestly) into a new
    pack, and a point naming the old pack."""
    live = [os.urandom(3000), os.urandom(2000)]
    dead = os.urandom(5000)
    old, old_size = put_pack(machine, [live[0], dead, live[1]])
    new, new_size = put_pack(machine, live)
    kept = point(machine, [old])
    honest = {
        "packs": [
            {
                "pack": old,
                "size": old_size,
                "objects": [[0, 3000, 0, 0], [3000, 5000], [8000, 2000, 0, 3000]],
            }
        ],
        "new_packs": [{"pack": new, "size": new_size}],
    }
    return {"old": old, "new": new, "point": kept, "report": honest}


def post_result(client, machine, report: dict, *, before=None):
    job = services.compact_start(machine=machine)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_for(machine)}"}
    assert client.post(f"/api/agent/jobs/{job.pk}/start/", **auth).status_code == 200
    if before is not None:
        before()
    response = client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps(
            {"status": "completed", "compaction": report, "result_id": str(uuid.uuid4())}
        ),
        content_type="application/json",
        **auth,
    )
    job.refresh_from_db()
    return response, job


def test_an_honest_report_moves_the_references_and_deletes_the_old_pack(client, machine, repo):
    response, job = post_result(client, machine, repo["report"])
    assert response.status_code == 200
    assert job.status == Job.Status.COMPLETED, job.error
    assert not stored(machine, repo["old"])
    repo["point"].refresh_from_db()
    assert repo["point"].pack_ids == [repo["new"]]


def test_a_report_claiming_a_copy_it_did_not_make_deletes_nothing(client, machine, repo):
    report = repo["report"]
    # the second live object "moved" to where the first one is
    report["packs"][0]["objects"][2] = [8000, 2000, 0, 0]
    response, job = post_result(client, machine, report)
    assert response.status_code == 200
    assert job.status == Job.Status.FAILED
    assert "refused this compaction's report" in job.error and "Nothing was deleted" in job.error
    assert stored(machine, repo["old"])
    repo["point"].refresh_from_db()
    assert repo["point"].pack_ids == [repo["old"]]


def test_a_report_hiding_live_objects_of_a_pack_deletes_nothing(client, machine, repo):
    """Only the first object reported (as moved): the pack's trailer says it holds three."""
    report = repo["report"]
    report["packs"][0]["objects"] = [[0, 3000, 0, 0]]
    _response, job = post_result(client, machine, report)
    assert job.status == Job.Status.FAILED and "holds 3 chunk objects" in job.error
    assert stored(machine, repo["old"])


def test_a_report_naming_a_new_pack_that_is_not_stored_deletes_nothing(client, machine, repo):
    report = repo["report"]
    report["new_packs"][0]["pack"] = "ab" * 16
    _response, job = post_result(client, machine, report)
    assert job.status == Job.Status.FAILED and "is not stored as reported" in job.error
    assert stored(machine, repo["old"])


def test_a_report_naming_another_machines_pack_deletes_nothing(client, machine, vault, repo):
    other = make_machine(vault, name="db-01")
    theirs, size = put_pack(other, [os.urandom(4000)])
    point(other, [theirs])
    report = {
        "packs": [{"pack": theirs, "size": size, "objects": [[0, 4000]]}],
        "new_packs": [],
    }
    _response, job = post_result(client, machine, report)
    assert job.status == Job.Status.FAILED and "is not stored as reported" in job.error
    assert stored(other, theirs)


def test_a_pack_a_point_recorded_during_the_job_names_is_kept(client, machine, repo):
    """A backup recorded its point (naming the old pack) after the compaction started: the
    report is honest, yet the pack stays, and that point's references are its own."""
    late: list[RecoveryPoint] = []
    _response, job = post_result(
        client, machine, repo["report"], before=lambda: late.append(point(machine, [repo["old"]]))
    )
    assert job.status == Job.Status.COMPLETED, job.error
    assert "kept because" in job.error
    assert stored(machine, repo["old"])
    late[0].refresh_from_db()
    assert late[0].pack_ids == [repo["old"]]


@pytest.mark.parametrize(
    "report",
    [
        "not an object",
        {"packs": [{"pack": "../../snapshots/x", "size": 1, "objects": []}], "new_packs": []},
        {"packs": [{"pack": "ab" * 16, "size": 1, "objects": [[0, 1, 5, 0]]}], "new_packs": []},
        {"packs": [{"pack": "ab" * 16, "size": -1, "objects": []}], "new_packs": []},
    ],
)
def test_a_malformed_report_is_refused_with_a_400(client, machine, repo, report):
    response, job = post_result(client, machine, report)
    assert response.status_code == 400
    assert job.status == Job.Status.RUNNING
