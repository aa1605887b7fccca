"""Builders for the portal-side test data: users, subscriptions and their members, resource
groups, vaults and machines.

Plain functions with keyword-only arguments and the defaults the suites share (subscription
"Contoso", resource group "backup-rg" in West Europe, a ready vault "vault-one", machine
"web-01"). The shared cast's fixtures (alice, bob, charlie, subscription, member,
resource_group, vault) are in tests/conftest.py; the apps' conftests build the rest with these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agents.models import Machine
from portal.models import Membership, ResourceGroup, Role, Subscription, User
from vaults.models import Vault

PASSWORD = "correct horse battery"


def make_user(*, username: str, password: str | None = PASSWORD, **extra) -> User:
    return User.objects.create_user(username=username, password=password, **extra)


def make_subscription(
    *, owner: User, name: str = "Contoso", members: Mapping[User, str] | None = None
) -> Subscription:
    """A subscription ``owner`` created and owns; ``members`` maps more users to their role."""
    subscription = Subscription.objects.create(name=name, created_by=owner)
    Membership.objects.create(user=owner, subscription=subscription, role=Role.OWNER)
    for user, role in (members or {}).items():
        give_role(user=user, subscription=subscription, role=role)
    return subscription


def make_outsider(*, username: str = "charlie", **extra) -> User:
    """A user who owns another subscription ("Fabrikam") and belongs to nothing else."""
    user = make_user(username=username, **extra)
    make_subscription(owner=user, name="Fabrikam")
    return user


def give_role(*, user: User, subscription: Subscription, role: str) -> User:
    """Gives ``user`` that role on ``subscription`` (a member already gets it changed)."""
    Membership.objects.update_or_create(
        user=user, subscription=subscription, defaults={"role": role}
    )
    return user


def role_giver(*, user: User, subscription: Subscription) -> Callable[[str], User]:
    """``give(role)`` gives ``user`` that role on ``subscription`` and returns the user."""
    return lambda role: give_role(user=user, subscription=subscription, role=role)


def make_resource_group(
    *, subscription: Subscription, name: str = "backup-rg", location: str = "West Europe"
) -> ResourceGroup:
    return ResourceGroup.objects.create(subscription=subscription, name=name, location=location)


def make_vault(
    *,
    resource_group: ResourceGroup,
    name: str = "vault-one",
    state: str = Vault.State.READY,
    location: str = "West Europe",
    **extra,
) -> Vault:
    """A vault in ``resource_group`` (ready unless told), recorded only: nothing is deployed."""
    return Vault.objects.create(
        subscription=resource_group.subscription,
        resource_group=resource_group,
        name=name,
        location=location,
        state=state,
        **extra,
    )


def make_machine(*, vault: Vault, name: str = "web-01", **extra) -> Machine:
    return Machine.objects.create(vault=vault, name=name, **extra)
