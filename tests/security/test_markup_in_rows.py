"""Markup a machine controls, in the long lists the portal builds in Python (Backup items,
the jobs list and its pushed row, Recover Data's times: ``jobs.templatetags.jobs_tags``)
rather than in templates that escape on their own: a machine's name (its host name at
registration), the broker's error and a verify report's damaged files are text, never
markup, on every one of them."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Job, RecoveryPoint
from jobs.services import live
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine
from vaults.services import group_for_vault

pytestmark = pytest.mark.django_db
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent

MARKUP = '"><b id=injected>'


def test_a_machines_markup_is_text_in_backup_items_the_jobs_list_and_recover_data(
    client, alice, vault
):
    machine = make_machine(vault, f"web{MARKUP}")
    job = services.backup_start(machine=machine)
    now = timezone.now()
    RecoveryPoint.objects.create(
        machine=machine, vault=vault, snapshot_id="ab" * 16, manifest_blob="snapshots/x",
        created_at=now, tagged_for=now, verify_damaged_at=now,
        verify_damage={"files": [f"/srv/{MARKUP}"], "packs": [MARKUP]},
    )  # fmt: skip
    client.force_login(alice)
    pages = {
        "backup items": client.get(f"/jobs/vaults/{vault.pk}/backup-items/"),
        "jobs list": client.get("/jobs/"),
        "recover data": client.get(f"/recover/{machine.pk}/to/{machine.pk}/"),
    }
    job.refresh_from_db()
    pushed = dict(live.job_fragments(job))[group_for_vault(vault.pk)]
    for name, response in pages.items():
        assert response.status_code == 200, name
        assert "<b id=injected>" not in response.content.decode(), name
    assert "<b id=injected>" not in pushed and "&lt;b id=injected&gt;" in pushed
    assert "&quot;&gt;&lt;b id=injected&gt;" in pages["recover data"].content.decode()
    assert Job.objects.filter(machine=machine).count() == 1
