"""Creating a vault and deploying it on the portal worker: success, failure, retry."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from portal.models import Notification, ResourceGroup
from tests.vaults.conftest import make_vault
from vaults import services, storage
from vaults.models import Vault, VaultUsageSample

pytestmark = pytest.mark.usefixtures("vault_env")


def broken_account(tmp_path):
    """A local account whose directory cannot exist: a real "storage unreachable"."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    return storage.LocalStorageAccount(blocker / "storage")


def create(subscription, alice, **extra):
    args = {
        "subscription": subscription,
        "name": "prod-vault",
        "location": "West Europe",
        "created_by": alice,
    }
    args.update(extra)
    return services.vault_create(**args)


def test_create_starts_deploying_and_enqueues_after_commit(
    subscription, resource_group, alice, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr("vaults.tasks.deploy_vault.apply_async", lambda **kw: sent.append(kw))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        vault = create(subscription, alice, resource_group=resource_group, tags={"env": "prod"})
        assert sent == []  # nothing leaves before commit
    for callback in callbacks:
        callback()
    assert sent == [{"args": [str(vault.pk)], "queue": "portal"}]
    assert vault.state == Vault.State.DEPLOYING
    assert vault.tags == {"env": "prod"}
    note = Notification.objects.get(user=alice, key=f"deploy:{vault.pk}")
    assert note.level == Notification.Level.IN_PROGRESS
    assert "Deployment in progress" in note.title


def test_create_can_make_a_new_resource_group(subscription, alice):
    vault = create(subscription, alice, new_resource_group_name="fresh-rg")
    rg = ResourceGroup.objects.get(name="fresh-rg")
    assert vault.resource_group == rg and rg.location == "West Europe"


def test_a_bad_new_resource_group_name_creates_nothing(subscription, alice):
    with pytest.raises(ValidationError) as caught:
        create(subscription, alice, new_resource_group_name="bad/name")
    assert "resource_group" in caught.value.message_dict
    assert not Vault.objects.exists() and not ResourceGroup.objects.exists()


def test_a_resource_group_of_another_subscription_is_refused(subscription, alice, charlie):
    from portal.models import Subscription

    foreign = ResourceGroup.objects.create(
        subscription=Subscription.objects.get(name="Fabrikam"), name="theirs", location="x"
    )
    with pytest.raises(ValidationError) as caught:
        create(subscription, alice, resource_group=foreign)
    assert "resource_group" in caught.value.message_dict


def test_the_whole_path_runs_through_the_task(
    subscription, resource_group, alice, eager, django_capture_on_commit_callbacks, pushes
):
    with django_capture_on_commit_callbacks(execute=True):
        vault = create(subscription, alice, resource_group=resource_group)
    vault.refresh_from_db()
    assert vault.state == Vault.State.READY
    assert storage.primary_account().container_exists(vault.container)
    note = Notification.objects.get(user=alice, key=f"deploy:{vault.pk}")
    assert note.level == Notification.Level.SUCCESS
    assert note.link_label == "Go to resource" and note.link_url == f"/vaults/{vault.pk}/"
    # The page and the bell heard about it: the vault's group got the finished status.
    vault_pushes = [html for group, html in pushes if group == f"vault.{vault.pk}"]
    assert "Your deployment is complete" in vault_pushes[-1]
    assert 'hx-swap-oob="outerHTML"' in vault_pushes[-1]
    assert any(group == f"user.{alice.pk}" for group, _ in pushes)


def test_deploy_names_the_container_validly_and_provisions_the_secondary(deployed_vault):
    vault = deployed_vault
    assert vault.container == f"vault-{vault.pk.hex}"
    storage.check_container_name(vault.container)
    assert vault.redundancy == Vault.Redundancy.GEO
    assert vault.secondary_container == vault.container
    assert storage.secondary_account().container_exists(vault.container)
    assert vault.deployed_at is not None
    assert VaultUsageSample.objects.filter(vault=vault, bytes_used=0).count() == 1


def test_deploy_is_idempotent(deployed_vault):
    again = services.vault_deploy(vault=deployed_vault)
    assert again.state == Vault.State.READY
    assert VaultUsageSample.objects.filter(vault=again).count() == 1


def test_unreachable_storage_fails_the_deployment_in_plain_words(
    resource_group, alice, monkeypatch, tmp_path
):
    monkeypatch.setattr(storage, "primary_account", lambda: broken_account(tmp_path))
    vault = make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
    vault = services.vault_deploy(vault=vault)
    assert vault.state == Vault.State.FAILED
    assert vault.state_reason.startswith("The vault's storage could not be prepared:")
    assert "not usable" in vault.state_reason
    assert vault.container == ""
    note = Notification.objects.get(user=alice, key=f"deploy:{vault.pk}")
    assert note.level == Notification.Level.ERROR
    assert "not usable" in note.body and note.link_label == "Retry"


def test_a_failure_on_the_secondary_removes_the_primary_container(
    resource_group, alice, monkeypatch, tmp_path
):
    monkeypatch.setattr(storage, "secondary_account", lambda: broken_account(tmp_path))
    vault = make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
    vault = services.vault_deploy(vault=vault)
    assert vault.state == Vault.State.FAILED
    assert not storage.primary_account().container_exists(services.container_name_for(vault))


def test_an_unexpected_error_still_fails_the_deployment(resource_group, alice, monkeypatch):
    def explode():
        raise RuntimeError("boom")

    monkeypatch.setattr(storage, "primary_account", explode)
    vault = make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
    vault = services.vault_deploy(vault=vault)
    assert vault.state == Vault.State.FAILED
    assert "unexpected error (RuntimeError)" in vault.state_reason


def test_retry_after_the_storage_is_back_succeeds(
    resource_group, alice, monkeypatch, tmp_path, eager, django_capture_on_commit_callbacks
):
    with monkeypatch.context() as patch:
        patch.setattr(storage, "primary_account", lambda: broken_account(tmp_path))
        vault = services.vault_deploy(
            vault=make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
        )
    assert vault.state == Vault.State.FAILED
    with django_capture_on_commit_callbacks(execute=True):
        services.vault_deploy_retry(vault=vault, user=alice)
    vault.refresh_from_db()
    assert vault.state == Vault.State.READY and vault.state_reason == ""
    assert Notification.objects.get(key=f"deploy:{vault.pk}").level == Notification.Level.SUCCESS
    assert Notification.objects.filter(user=alice).count() == 1  # one notification, updated


def test_retry_refuses_a_vault_that_did_not_fail(deployed_vault, alice):
    with pytest.raises(ValidationError):
        services.vault_deploy_retry(vault=deployed_vault, user=alice)


def test_the_task_ignores_a_vault_deleted_before_it_ran(db):
    from vaults.tasks import deploy_vault

    deploy_vault("00000000-0000-0000-0000-000000000000")  # no error
