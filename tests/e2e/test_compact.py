"""Compact now in Chromium: the owner presses it on the machine page, lands on the Compact
job, watches it rewrite packs live, and reads what the portal deleted once the agent's
report (posted here through the service the agent API calls) was checked."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.e2e._vault_support import e2e_storage  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def _machine_with_a_partly_dead_pack(owner):
    """web-01 with one point naming a pack of three chunk objects, the middle one dead, and
    the new pack the agent would write holding the other two."""
    from django.utils import timezone

    from agents.runtime.engine import layout
    from agents.runtime.engine.crypto import Sealer
    from agents.runtime.engine.format import PackBuilder
    from jobs.models import RecoveryPoint
    from tests.support import builders
    from vaults import storage

    vault = builders.make_vault(resource_group=owner.resource_group, name="vault-compact")
    machine = builders.make_machine(
        vault=vault, name="web-01", container="m-compact", last_seen_at=timezone.now()
    )
    account = storage.primary_account()
    account.create_container(machine.container)
    objects = [os.urandom(3000), os.urandom(5000), os.urandom(2000)]

    def pack(chunks: list[bytes]) -> tuple[str, int]:
        builder = PackBuilder()
        for chunk in chunks:
            builder.add(os.urandom(32), chunk, len(chunk))
        pack_id = os.urandom(16)
        data = bytes(builder.finish(Sealer(os.urandom(32)), pack_id))
        with account.store(machine.container) as store:
            store.put(layout.pack_blob(pack_id), data)
        return pack_id.hex(), len(data)

    old, old_size = pack(objects)
    new, new_size = pack([objects[0], objects[2]])
    RecoveryPoint.objects.create(
        machine=machine,
        vault=vault,
        snapshot_id="a1" * 16,
        manifest_blob=layout.manifest_blob("a1" * 16),
        created_at=timezone.now(),
        tagged_for=timezone.now(),
        kind=RecoveryPoint.Kind.ADHOC,
        pack_ids=[old],
    )
    report = {
        "packs": [
            {
                "pack": old,
                "size": old_size,
                "objects": [[0, 3000, 0, 0], [3000, 5000], [8000, 2000, 0, 3000]],
            }
        ],
        "new_packs": [{"pack": new, "size": new_size}],
    }
    return machine, report


def test_compact_now_from_the_machine_page(
    e2e_storage,  # noqa: F811 - before the live portal starts
    signed_in_page,
    live_portal,
    portal_owner,
    screenshot,
):
    from agents.runtime.protocol import CompactReport
    from jobs import services
    from jobs.models import Job

    page = signed_in_page
    machine, report = _machine_with_a_partly_dead_pack(portal_owner)
    page.goto(f"{live_portal}/machines/{machine.pk}/")
    screenshot("compact-machine-page")
    page.locator("[data-action=compact]").click()
    expect(page.locator("h1")).to_contain_text("Compact · web-01")
    job = Job.objects.get(operation=Job.Operation.COMPACT)
    assert f"/jobs/{job.pk}/" in page.url

    # the agent starts and reports its progress: the page follows it live
    services.job_mark_started(job=job)
    job.refresh_from_db()
    services.job_record_progress(
        job=job,
        event={"phase": "compacting", "files_done": 1, "files_total": 1, "bytes_done": 10_000,
               "bytes_total": 10_000, "current": report["packs"][0]["pack"]},
    )  # fmt: skip
    expect(page.get_by_text("Rewriting packs")).to_be_visible()
    expect(page.get_by_text("1 of 1")).to_be_visible()
    screenshot("compact-job-running")

    # its report: checked against storage, the old pack deleted
    job.refresh_from_db()
    services.job_finish(
        job=job,
        status="completed",
        error="Rewrote 1 of 2 packs (10,089 bytes) into 1 new pack (5,089 bytes).",
        compaction=CompactReport.from_wire(report),
    )
    page.reload()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    expect(page.locator("[data-field=error]")).to_contain_text("deleted 1 old pack (")
    screenshot("compact-job-completed", full_page=True)
