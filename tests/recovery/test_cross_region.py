"""Cross Region Restore, the portal's side: the vault setting gates it; a machine gets a
read-only grant to the *secondary* copy (its own, or a sibling's a person asked about);
the wizard offers only points already copied there, and a restore of one not yet copied
says so. (The restore itself, with the primary stopped, is tests/e2e/test_geo_redundancy.py.)"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from agents.runtime import protocol
from agents.runtime.blobstore import open_grant
from jobs import services as job_services
from jobs.models import Job
from jobs.schedule import zone
from portal.models import Role
from vaults import storage
from vaults.models import Vault
from vaults.storage.tokens import read_grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def crr(settings, tmp_path, vault):
    settings.SECONDARY_STORAGE_DIR = tmp_path / "secondary"
    Vault.objects.filter(pk=vault.pk).update(
        redundancy=Vault.Redundancy.GEO, secondary_container=vault.container,
        cross_region_restore=True,
    )  # fmt: skip
    vault.refresh_from_db()
    return vault


def copied(web01, points, upto: int) -> None:
    """Manifests of the first ``upto`` points in web-01's container, replicated."""
    with storage.primary_account().store(web01.container) as store:
        for point in points[:upto]:
            store.put(point.manifest_blob, b"sealed")
    web01.vault.refresh_from_db()
    job_services.replicate_machine(machine=web01)


def grant(client, machine, token_for, **body):
    return client.post(
        reverse("recovery_api:grant"),
        json.dumps(body),
        content_type="application/json",
        **token_for(machine),
    )


def test_a_machine_gets_a_read_only_grant_to_its_own_secondary_copy(
    crr, client, web01, points, token_for
):
    copied(web01, points, 1)
    response = grant(client, web01, token_for, source_machine="web-01", region="secondary")
    assert response.status_code == 200
    data = response.json()["grant"]
    assert data["permissions"] == "rl" and data["container"] == web01.container
    if data["kind"] == "azure-sas":  # the secondary account's blobs, read-only
        assert storage.secondary_account().endpoint in data["container_url"]
        with open_grant(data) as store:
            assert store.get(points[0].manifest_blob) == b"sealed"
    else:  # the portal's endpoint serves the account the token names
        assert read_grant(data["token"]).account == "secondary"


def test_the_secondary_grant_needs_the_setting_and_a_known_region(
    vault, settings, tmp_path, client, web01, token_for
):
    settings.SECONDARY_STORAGE_DIR = tmp_path / "secondary"
    response = grant(client, web01, token_for, source_machine="web-01", region="secondary")
    assert response.status_code == 404 and "not enabled" in response.json()["message"]
    response = grant(client, web01, token_for, source_machine="web-01", region="moon")
    assert response.status_code == 400
    response = grant(client, web01, token_for, source_machine="web-01", region=["secondary"])
    assert response.status_code == 400


def test_a_sibling_still_needs_a_persons_say_so(crr, client, web01, web02, token_for):
    response = grant(client, web02, token_for, source_machine="web-01", region="secondary")
    assert response.status_code == 403


def test_a_restore_of_a_point_not_yet_copied_says_so_and_a_copied_one_starts(
    crr, client, alice, web01, points, sent
):
    copied(web01, points, 2)
    client.force_login(alice)
    url = reverse("recovery:restore", args=[web01.pk, web01.pk])
    form = {"rp": points[2].snapshot_id, "paths": ["/etc/hosts"], "region": "secondary"}
    response = client.post(url, form, follow=True)
    assert "has not been copied to the secondary region yet" in response.content.decode()
    # answered 400 with the wizard, still reading the secondary region
    assert response.status_code == 400
    assert '<input type="hidden" name="region" value="secondary">' in response.content.decode()
    assert not Job.objects.filter(operation=Job.Operation.RESTORE).exists() and not sent

    form["rp"] = points[1].snapshot_id
    response = client.post(url, form)
    job = Job.objects.get(operation=Job.Operation.RESTORE)
    assert response.url == reverse("jobs:detail", args=[job.pk])
    assert job.details["region"] == "secondary"
    assert sent[-1][2]["source_region"] == protocol.REGION_SECONDARY
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "Secondary region (Cross Region Restore)" in page


def test_the_wizard_offers_only_points_already_on_the_secondary(crr, client, alice, web01, points):
    copied(web01, points, 1)
    client.force_login(alice)
    url = reverse("recovery:wizard", args=[web01.pk, web01.pk])
    body = client.get(url + "?region=secondary").content.decode()
    assert 'id="region-secondary"' in body and 'name="region" value="secondary"' in body
    assert body.count("Not yet copied to the secondary region") == 1  # the newest day's
    times = reverse("recovery:times", args=[web01.pk, web01.pk])
    tz = zone(web01.time_zone)
    days = [
        client.get(
            times,
            {"day": f"{p.created_at.astimezone(tz):%Y-%m-%d}", "region": "secondary"},
            HTTP_HX_REQUEST="true",
        ).content.decode()
        for p in points
    ]
    assert [d.count("Not yet copied to the secondary region") for d in days] == [0, 1, 1]
    primary = client.get(url).content.decode()
    assert "Not yet copied" not in primary and 'name="region"' not in primary


def test_questions_in_the_secondary_region_carry_it_to_the_agent(
    crr, client, alice, web01, points, sent
):
    client.force_login(alice)
    url = reverse("recovery:ask", args=[web01.pk, web01.pk, "browse"])
    client.post(url, {"rp": points[0].snapshot_id, "path": "/", "region": "secondary"})
    assert sent[-1][2]["source_region"] == "secondary"
    Vault.objects.filter(pk=crr.pk).update(cross_region_restore=False)
    response = client.post(url, {"rp": points[0].snapshot_id, "region": "secondary"})
    assert "not enabled" in response.content.decode() and len(sent) == 1


@pytest.mark.parametrize("role", [Role.READER, Role.BACKUP_OPERATOR])
def test_only_a_contributor_turns_it_on(vault, settings, tmp_path, client, member, role):
    settings.SECONDARY_STORAGE_DIR = tmp_path / "secondary"
    Vault.objects.filter(pk=vault.pk).update(secondary_container=vault.container)
    client.force_login(member(role))
    url = reverse("vaults:cross-region-restore", args=[vault.pk])
    assert client.post(url, {"confirm": "enable"}).status_code == 403
    vault.refresh_from_db()
    assert not vault.cross_region_restore


def test_unregistering_a_machine_stops_its_grants_to_the_secondary_too(
    crr, client, web01, points, token_for
):
    from agents.runtime.blobstore import BlobForbidden
    from agents.services import machine_unregister

    copied(web01, points, 1)
    data = grant(client, web01, token_for, source_machine="web-01", region="secondary").json()
    machine_unregister(machine=web01)
    if data["grant"]["kind"] == "azure-sas":
        with pytest.raises(BlobForbidden), open_grant(data["grant"]) as store:
            store.get(points[0].manifest_blob)
    else:
        generation = storage.secondary_account().generation(web01.container)
        assert read_grant(data["grant"]["token"]).generation != generation


def test_an_outsider_cannot_see_or_turn_it_on(crr, client, charlie):
    client.force_login(charlie)
    url = reverse("vaults:cross-region-restore", args=[crr.pk])
    assert client.post(url, {"confirm": "enable"}).status_code == 404


def test_an_unknown_region_in_the_wizard_is_said_not_a_500(crr, client, alice, web01, points):
    client.force_login(alice)
    url = reverse("recovery:wizard", args=[web01.pk, web01.pk])
    response = client.get(url + "?region=moon")
    assert response.status_code == 200
    assert "Choose the primary or the secondary region" in response.content.decode()
    restore = reverse("recovery:restore", args=[web01.pk, web01.pk])
    form = {"rp": points[0].snapshot_id, "paths": ["/a"], "region": "moon"}
    assert client.post(restore, form).status_code == 400  # bad input, said on the wizard
    assert not Job.objects.filter(operation=Job.Operation.RESTORE).exists()
