"""Every portal view against every role: alice's subscription, bob with each role on it,
charlie with none. Outsiders get 404 (we do not confirm the resource exists), members
whose role is too low get 403, and neither changes anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.urls import reverse

from portal.models import Membership, ResourceGroup, Role, Subscription, User
from tests.portal.conftest import ROLES, client_for, make_user

OUTSIDER = "outsider"


@dataclass
class Case:
    name: str
    method: str
    url: Callable  # (ctx) -> str
    min_role: str
    data: Callable | None = None  # (ctx) -> dict
    changed: Callable | None = None  # (ctx) -> bool: did the write happen?
    ok_status: int = 200
    outsider_status: int = 404


def _rg(ctx):
    return ctx["group"]


CASES = [
    Case(
        "subscription overview",
        "get",
        lambda c: reverse("portal:subscription", args=[c["subscription"].pk]),
        Role.READER,
    ),
    Case(
        "access control",
        "get",
        lambda c: reverse("portal:subscription-access", args=[c["subscription"].pk]),
        Role.READER,
    ),
    Case(
        "add a member",
        "post",
        lambda c: reverse("portal:subscription-access", args=[c["subscription"].pk]),
        Role.OWNER,
        data=lambda c: {"username": "dave", "role": Role.READER},
        changed=lambda c: Membership.objects.filter(user__username="dave").exists(),
        ok_status=302,
    ),
    Case(
        "rename subscription form",
        "get",
        lambda c: reverse("portal:subscription-rename", args=[c["subscription"].pk]),
        Role.OWNER,
    ),
    Case(
        "rename subscription",
        "post",
        lambda c: reverse("portal:subscription-rename", args=[c["subscription"].pk]),
        Role.OWNER,
        data=lambda c: {"name": "Fabrikam"},
        changed=lambda c: Subscription.objects.filter(name="Fabrikam").exists(),
        ok_status=302,
    ),
    Case(
        "delete subscription form",
        "get",
        lambda c: reverse("portal:subscription-delete", args=[c["subscription"].pk]),
        Role.OWNER,
    ),
    Case(
        "change a role",
        "post",
        lambda c: reverse(
            "portal:membership-role", args=[c["subscription"].pk, c["dave_membership"].pk]
        ),
        Role.OWNER,
        data=lambda c: {"role": Role.CONTRIBUTOR},
        changed=lambda c: (
            Membership.objects.get(pk=c["dave_membership"].pk).role == Role.CONTRIBUTOR
        ),
        ok_status=302,
    ),
    Case(
        "remove a member",
        "post",
        lambda c: reverse(
            "portal:membership-remove", args=[c["subscription"].pk, c["dave_membership"].pk]
        ),
        Role.OWNER,
        changed=lambda c: not Membership.objects.filter(pk=c["dave_membership"].pk).exists(),
        ok_status=302,
    ),
    Case(
        "resource group overview",
        "get",
        lambda c: reverse("portal:resource-group", args=[_rg(c).pk]),
        Role.READER,
    ),
    Case(
        "create a resource group",
        "post",
        lambda c: reverse("portal:resource-group-create"),
        Role.CONTRIBUTOR,
        data=lambda c: {
            "subscription": str(c["subscription"].pk),
            "name": "rg-new",
            "location": "West Europe",
        },
        changed=lambda c: ResourceGroup.objects.filter(name="rg-new").exists(),
        ok_status=302,
    ),
    Case(
        "rename resource group form",
        "get",
        lambda c: reverse("portal:resource-group-rename", args=[_rg(c).pk]),
        Role.CONTRIBUTOR,
    ),
    Case(
        "rename resource group",
        "post",
        lambda c: reverse("portal:resource-group-rename", args=[_rg(c).pk]),
        Role.CONTRIBUTOR,
        data=lambda c: {"name": "rg-renamed"},
        changed=lambda c: ResourceGroup.objects.filter(name="rg-renamed").exists(),
        ok_status=302,
    ),
    Case(
        "delete resource group form",
        "get",
        lambda c: reverse("portal:resource-group-delete", args=[_rg(c).pk]),
        Role.CONTRIBUTOR,
    ),
    Case(
        "delete resource group",
        "post",
        lambda c: reverse("portal:resource-group-delete", args=[_rg(c).pk]),
        Role.CONTRIBUTOR,
        changed=lambda c: not ResourceGroup.objects.filter(pk=_rg(c).pk).exists(),
        ok_status=302,
    ),
    # Not about one subscription: someone with no role anywhere is refused, not "not found".
    Case(
        "create subscription form",
        "get",
        lambda c: reverse("portal:subscription-create"),
        Role.OWNER,
        outsider_status=403,
    ),
    Case(
        "create a subscription",
        "post",
        lambda c: reverse("portal:subscription-create"),
        Role.OWNER,
        data=lambda c: {"name": "Northwind"},
        changed=lambda c: Subscription.objects.filter(name="Northwind").exists(),
        ok_status=302,
        outsider_status=403,
    ),
    Case("users", "get", lambda c: reverse("portal:users"), Role.OWNER, outsider_status=403),
    Case(
        "new user form",
        "get",
        lambda c: reverse("portal:user-create"),
        Role.OWNER,
        outsider_status=403,
    ),
    Case(
        "create a user",
        "post",
        lambda c: reverse("portal:user-create"),
        Role.OWNER,
        data=lambda c: {
            "username": "erin",
            "subscription": str(c["subscription"].pk),
            "role": Role.READER,
        },
        changed=lambda c: User.objects.filter(username="erin").exists(),
        outsider_status=403,
    ),
    Case(
        "deactivate a user",
        "post",
        lambda c: reverse("portal:user-deactivate", args=[c["dave"].pk]),
        Role.OWNER,
        changed=lambda c: not User.objects.get(pk=c["dave"].pk).is_active,
        ok_status=302,
        outsider_status=403,
    ),
    Case(
        "reset a password",
        "post",
        lambda c: reverse("portal:user-reset-password", args=[c["dave"].pk]),
        Role.OWNER,
        changed=lambda c: User.objects.get(pk=c["dave"].pk).password_change_required,
        outsider_status=403,
    ),
]


@pytest.fixture
def ctx(subscription, group):
    # A second Owner so that removing or demoting never trips the last-Owner rule, and
    # dave, a Reader whose role the cases change.
    dave = make_user("dave")
    return {
        "subscription": subscription,
        "group": group,
        "dave": dave,
        "dave_membership": None,
    }


def _who(who, ctx, bob_with, charlie):
    if who == OUTSIDER:
        return charlie
    return bob_with(who)


@pytest.mark.parametrize("who", [*ROLES, OUTSIDER])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_role_matrix(case, who, ctx, bob_with, charlie):
    user = _who(who, ctx, bob_with, charlie)
    if case.name != "add a member":
        ctx["dave_membership"] = Membership.objects.create(
            user=ctx["dave"], subscription=ctx["subscription"], role=Role.READER
        )
    client = client_for(user)
    url = case.url(ctx)
    data = case.data(ctx) if case.data else {}
    response = getattr(client, case.method)(url, data)

    allowed = who != OUTSIDER and Role.rank(who) >= Role.rank(case.min_role)
    if allowed:
        assert response.status_code == case.ok_status, response.content[:500]
    elif who == OUTSIDER:
        assert response.status_code == case.outsider_status
    else:
        assert response.status_code == 403
    if case.changed is not None:
        assert case.changed(ctx) is allowed


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_anonymous_visitors_are_sent_to_sign_in(case, client, ctx):
    if case.name != "add a member":
        ctx["dave_membership"] = Membership.objects.create(
            user=ctx["dave"], subscription=ctx["subscription"], role=Role.READER
        )
    response = getattr(client, case.method)(case.url(ctx), case.data(ctx) if case.data else {})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("portal:login"))
    if case.changed is not None:
        assert case.changed(ctx) is False


@pytest.mark.parametrize(
    "name",
    [
        "portal:home",
        "portal:resources",
        "portal:search",
        "portal:notifications",
        "portal:subscriptions",
        "portal:resource-groups",
        "portal:password-change",
    ],
)
def test_pages_for_everyone_show_only_what_the_user_may_see(name, subscription, group, charlie):
    owner_page = client_for(subscription.created_by).get(reverse(name), {"q": "rg"})
    outsider_page = client_for(charlie).get(reverse(name), {"q": "rg"})
    assert owner_page.status_code == 200
    assert outsider_page.status_code == 200
    assert b"rg-web" not in outsider_page.content
    assert b"Contoso" not in outsider_page.content
