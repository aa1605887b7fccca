"""Every endpoint of /api/v1/ as each role: outsider (charlie, who owns another
subscription), Reader, Backup Operator, Contributor and Owner of Contoso (bob, or alice as
Owner). An outsider gets 404 for anything of Contoso's and sees nothing of it in lists; a
role too low gets 403 and changes nothing; every answer is checked against the schema."""

from __future__ import annotations

import pytest

from jobs.models import Job
from portal.models import Role
from vaults.models import ActivityEntry, Vault

pytestmark = pytest.mark.django_db

ROLES = ["outsider", Role.READER, Role.BACKUP_OPERATOR, Role.CONTRIBUTOR, Role.OWNER]


def _rank(role: str) -> int:
    return 0 if role == "outsider" else Role.rank(role)


def _needs(role: str, needed: str, ok: int) -> int:
    """The status ``role`` gets from an endpoint that needs ``needed``."""
    if role == "outsider":
        return 404
    return ok if _rank(role) >= Role.rank(needed) else 403


@pytest.mark.parametrize("role", ROLES)
def test_each_endpoint_answers_each_role_as_its_rank_allows(role, api, world, member, charlie):
    user = charlie if role == "outsider" else member(role)
    client = api(user)
    w = world
    sub, vault, machine = w.subscription.pk, w.vault.pk, w.machine.pk
    reads = {
        f"/api/v1/subscriptions/{sub}/": 200,
        f"/api/v1/resource-groups/{w.resource_group.pk}/": 200,
        f"/api/v1/vaults/{vault}/": 200,
        f"/api/v1/machines/{machine}/": 200,
        f"/api/v1/machines/{machine}/policy/": 200,
        f"/api/v1/machines/{machine}/recovery-points/": 200,
        f"/api/v1/jobs/{w.job.pk}/": 200,
    }
    for path, ok in reads.items():
        assert client.get(path).status_code == _needs(role, Role.READER, ok), path

    # Lists: an outsider sees none of Contoso's rows (charlie's own Fabrikam rows only).
    lists = {
        "/api/v1/subscriptions/": ("Contoso", "name"),
        "/api/v1/resource-groups/": ("backup-rg", "name"),
        "/api/v1/vaults/": ("vault-one", "name"),
        "/api/v1/machines/": ("web-01", "name"),
        "/api/v1/jobs/": (str(w.job.pk), "id"),
        "/api/v1/alerts/": (w.alert.pk, "id"),
        "/api/v1/activity/": ("policy.change", "operation"),
    }
    for path, (value, field) in lists.items():
        response = client.get(path)
        assert response.status_code == 200, path
        found = [row[field] for row in response.json()["results"]]
        assert (value in found) == (role != "outsider"), path
    assert client.get("/api/v1/me/").json()["username"] == user.username

    # Writes, each needing its role.
    answer = client.post(
        "/api/v1/resource-groups/",
        {"subscription": str(sub), "name": "rg-api", "location": "West Europe"},
    )
    assert answer.status_code == _needs(role, Role.CONTRIBUTOR, 201)
    answer = client.post(
        "/api/v1/vaults/",
        {
            "subscription": str(sub),
            "resource_group": w.resource_group.pk,
            "name": "vault-api",
            "location": "West Europe",
        },
    )
    assert answer.status_code == _needs(role, Role.CONTRIBUTOR, 201)
    assert Vault.objects.filter(name="vault-api").exists() == (answer.status_code == 201)
    answer = client.put(
        f"/api/v1/vaults/{w.empty_vault.pk}/redundancy/", {"redundancy": Vault.Redundancy.LOCAL}
    )
    assert answer.status_code == _needs(role, Role.CONTRIBUTOR, 200)
    w.empty_vault.refresh_from_db()
    assert (w.empty_vault.redundancy == Vault.Redundancy.LOCAL) == (answer.status_code == 200)
    spec = w.policy.spec() | {"times": ["01:00"]}
    answer = client.put(f"/api/v1/machines/{machine}/policy/", {"spec": spec})
    assert answer.status_code == _needs(role, Role.CONTRIBUTOR, 200)
    w.policy.refresh_from_db()
    assert (w.policy.times == ["01:00"]) == (answer.status_code == 200)

    answer = client.post(f"/api/v1/jobs/{w.job.pk}/cancel/")
    assert answer.status_code == _needs(role, Role.BACKUP_OPERATOR, 200)
    w.job.refresh_from_db()
    assert (w.job.status == Job.Status.CANCELLED) == (answer.status_code == 200)
    answer = client.post(f"/api/v1/machines/{machine}/backup/", {})
    assert answer.status_code == _needs(role, Role.BACKUP_OPERATOR, 202)
    backups = Job.objects.filter(machine=w.machine, operation=Job.Operation.BACKUP)
    assert backups.exists() == (answer.status_code == 202)
    answer = client.post(
        f"/api/v1/machines/{machine}/restore/",
        {"recovery_point": "snap-1", "paths": ["/srv/data/report.txt"]},
    )
    assert answer.status_code == _needs(role, Role.BACKUP_OPERATOR, 202)
    restores = Job.objects.filter(machine=w.machine, operation=Job.Operation.RESTORE)
    assert restores.count() == (2 if answer.status_code == 202 else 1)

    answer = client.post(f"/api/v1/alerts/{w.alert.pk}/acknowledge/")
    assert answer.status_code == _needs(role, Role.BACKUP_OPERATOR, 200)
    answer = client.post(f"/api/v1/alerts/{w.alert.pk}/close/")
    assert answer.status_code == _needs(role, Role.BACKUP_OPERATOR, 200)
    w.alert.refresh_from_db()
    assert (w.alert.resolved_at is not None) == (answer.status_code == 200)

    # A member refused for their role leaves a refused entry in the vault's activity log;
    # an outsider leaves none in a vault they cannot see.
    refused = ActivityEntry.objects.filter(
        vault_id=vault, outcome=ActivityEntry.Outcome.REFUSED, username=user.username
    )
    assert refused.exists() == (role in (Role.READER, Role.BACKUP_OPERATOR))
    assert client.validated > 20
