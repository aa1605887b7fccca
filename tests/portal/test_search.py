"""Global search, All resources and Home's recent list, through the resource registry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from portal import search, services
from portal.models import ResourceGroup
from tests.portal.conftest import client_for

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def machines_registered(monkeypatch, subscription):
    """A stand-in for what the agents app registers: it sees the user's subscription."""
    monkeypatch.setattr(search, "_kinds", dict(search._kinds))

    def find_machines(user, query, limit, *, newest_first=False):
        from portal import access

        if not access.role_in(user, subscription.pk):
            return []
        rows = [
            search.Resource(
                kind="machine",
                type_label="Machine",
                name=name,
                url=f"/machines/{name}/",
                subscription=subscription.name,
                resource_group="rg-web",
            )
            for name in ("web-01", "db-01")
        ]
        return [r for r in rows if query.lower() in r.name.lower()][:limit]

    search.register("machine", find_machines, label="Machines", order=40)


def test_the_top_bar_finds_groups_and_subscriptions_i_may_see(alice, subscription, group, charlie):
    services.subscription_create(name="Charlie web", owner=charlie)
    body = client_for(alice).get(reverse("portal:search"), {"q": "WEB"}, **HTMX).content.decode()
    assert "rg-web" in body
    assert "Charlie" not in body
    assert "Resource groups" in body


def test_registered_kinds_join_search_and_all_resources(
    alice, group, machines_registered, bob_with, charlie
):
    client = client_for(alice)
    body = client.get(reverse("portal:search"), {"q": "web"}, **HTMX).content.decode()
    assert "web-01" in body and "Machines" in body
    page = client.get(reverse("portal:resources"), {"type": "machine"}).content.decode()
    assert "web-01" in page and "db-01" in page
    assert "rg-web</a>" not in page  # filtered to machines
    assert "web-01" not in client_for(charlie).get(reverse("portal:resources")).content.decode()


def test_all_resources_sorts_and_filters(alice, subscription, group):
    services.resource_group_create(subscription=subscription, name="rg-alpha", location="UK South")
    client = client_for(alice)
    page = client.get(reverse("portal:resources"), {"sort": "-name"}).content.decode()
    assert page.index("rg-web") < page.index("rg-alpha")
    assert 'class="sort-desc"' in page
    filtered = client.get(reverse("portal:resources"), {"q": "alpha"}).content.decode()
    assert "rg-alpha" in filtered and ">rg-web<" not in filtered
    # Nonsense parameters fall back to defaults.
    assert (
        client.get(reverse("portal:resources"), {"sort": "drop table", "type": "x"}).status_code
        == 200
    )


def test_search_without_htmx_is_a_full_page(alice, group):
    page = client_for(alice).get(reverse("portal:search"), {"q": "rg"}).content.decode()
    assert "<html" in page and "rg-web" in page


def test_an_empty_search_returns_nothing(alice, group):
    assert (
        client_for(alice).get(reverse("portal:search"), {"q": " "}, **HTMX).content.strip() == b""
    )


def test_home_shows_the_get_started_path_and_recent_resources(alice, subscription, group):
    page = client_for(alice).get(reverse("portal:home")).content.decode()
    for step in (
        "Create a subscription",
        "Create a resource group",
        "Create a Recovery Services vault",
        "Prepare infrastructure",
        "Register the agent",
        "Set a backup policy",
        "Back up now",
    ):
        assert step in page
    assert "Step 3 of 7" in page
    assert "rg-web" in page


def test_all_resources_uses_few_queries(alice, subscription, django_assert_max_num_queries):
    for n in range(10):
        services.resource_group_create(
            subscription=subscription, name=f"rg-{n}", location="UK South"
        )
    client = client_for(alice)
    with django_assert_max_num_queries(12):
        assert client.get(reverse("portal:resources")).status_code == 200


def test_home_lists_the_newest_resources_even_when_their_names_sort_last(
    alice, subscription, django_assert_max_num_queries
):
    old = timezone.now() - timedelta(days=30)
    for n in range(10):
        group = services.resource_group_create(
            subscription=subscription, name=f"rg-a{n}", location="UK South"
        )
        ResourceGroup.objects.filter(pk=group.pk).update(created_at=old + timedelta(hours=n))
    services.resource_group_create(subscription=subscription, name="rg-zulu", location="UK South")

    page = client_for(alice).get(reverse("portal:home")).content.decode()
    recent = page[page.index('class="card recent"') :]
    assert "rg-zulu" in recent and "Contoso" in recent
    assert "rg-a9" in recent and "rg-a0<" not in recent  # the oldest make way
    assert recent.index("rg-zulu") < recent.index("rg-a9")
    # One bounded query per kind, however many rows there are.
    with django_assert_max_num_queries(len(search.kinds())):
        assert len(search.recent(alice, limit=8)) == 8
