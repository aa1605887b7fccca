"""The policy editor's System State checkbox and seed staging folder: saved into the spec sent
to the agent (only when set, so older policies keep their hash), each bad value refused with
400 next to its field, and no change by a Reader or an outsider."""

from __future__ import annotations

import pytest

from agents.runtime import protocol
from jobs.models import BackupPolicy
from portal.models import Role

pytestmark = pytest.mark.django_db

FORM = {
    "items": "/srv/data",
    "frequency": "daily",
    "times": ["00:00"],
    "daily_enabled": "on",
    "daily_days": "7",
    "initial_backup": "online",
}


def _post(client, machine, **changes):
    return client.post(f"/jobs/machines/{machine.pk}/policy/", {**FORM, **changes})


def test_system_state_and_the_seed_folder_are_saved_and_sent_to_the_agent(
    client, alice, machine, sent
):
    client.force_login(alice)
    assert _post(client, machine).status_code == 302
    plain = BackupPolicy.objects.get(machine=machine)
    assert protocol.POLICY_SYSTEM_STATE not in plain.spec()  # the hash it always had
    response = _post(
        client, machine, system_state="on", initial_backup="offline",
        seed_staging="/mnt/seed-disk/web-01",
    )  # fmt: skip
    assert response.status_code == 302
    policy = BackupPolicy.objects.get(machine=machine)
    assert policy.system_state and policy.seed_staging == "/mnt/seed-disk/web-01"
    pushed = sent[-1][2]["policy"]
    assert pushed[protocol.POLICY_SYSTEM_STATE] is True
    assert pushed[protocol.POLICY_SEED_STAGING] == "/mnt/seed-disk/web-01"
    page = client.get(f"/jobs/machines/{machine.pk}/policy/").content.decode()
    assert 'name="system_state" checked' in page and 'value="/mnt/seed-disk/web-01"' in page
    # the pages that say how to seed name the folder, and the command needs no --to
    waiting = client.get(f"/jobs/machines/{machine.pk}/backup-now/").content.decode()
    assert '<dd class="mono" data-field="seed-folder">/mnt/seed-disk/web-01</dd>' in waiting
    assert "--to PATH" not in waiting
    seeding = client.get(f"/jobs/machines/{machine.pk}/seeding/").content.decode()
    assert "Seed staging folder" in seeding and "/mnt/seed-disk/web-01" in seeding
    # unchecked: System State is off again, and the agent is told
    assert _post(client, machine).status_code == 302
    policy.refresh_from_db()
    assert not policy.system_state and policy.seed_staging == ""
    assert protocol.POLICY_SYSTEM_STATE not in sent[-1][2]["policy"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed_staging": "relative/folder", "initial_backup": "offline"}, "absolute path"),
        ({"seed_staging": "/mnt/a\nb", "initial_backup": "offline"}, "absolute path"),
        ({"seed_staging": "/" + "x" * 400, "initial_backup": "offline"}, "400 characters"),
        ({"seed_staging": "/", "initial_backup": "offline"}, "a folder of its own"),
        ({"seed_staging": "/mnt/../etc", "initial_backup": "offline"}, "a folder of its own"),
        ({"seed_staging": "/mnt/seed"}, "used only by an Offline initial backup"),
    ],
)
def test_a_bad_seed_folder_is_refused_next_to_its_field(client, alice, machine, changes, message):
    client.force_login(alice)
    response = _post(client, machine, **changes)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-error-for="seed_staging"' in page and message in page
    assert not BackupPolicy.objects.exists()


def test_a_reader_and_an_outsider_cannot_turn_system_state_on(
    client, member, charlie, machine, policy
):
    client.force_login(member(Role.READER))
    assert _post(client, machine, system_state="on").status_code == 403
    client.force_login(charlie)
    assert _post(client, machine, system_state="on").status_code == 404
    policy.refresh_from_db()
    assert not policy.system_state
