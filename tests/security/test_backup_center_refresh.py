"""The Backup center's live refresh (``fleet.REFRESH_HEADER``, answered with
``HX-Replace-Url`` when the filters it fetched differ from its page's address): an outsider
gets the sign-in page and nothing of the portal's, and a Reader cannot learn or carry
another subscription's vault through the address it asks the portal to put in place."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.shortcuts import resolve_url

from jobs.services import fleet
from portal.models import Role, Subscription
from tests.support import builders

pytestmark = pytest.mark.django_db

URL = "/backup-center/"


def _refresh(client, params, current):
    headers = {"HX-Request": "true", "HX-Current-URL": current, fleet.REFRESH_HEADER: "1"}
    return client.get(URL, params, headers=headers)


def test_an_outsider_s_refresh_is_sent_to_sign_in_with_no_address(client, vault):
    answer = _refresh(client, {"vault": str(vault.pk)}, "http://testserver/backup-center/")
    assert answer.status_code == 302
    assert answer["Location"].startswith(resolve_url(settings.LOGIN_URL))
    assert "HX-Replace-Url" not in answer


def test_a_reader_s_refresh_never_puts_another_subscription_s_vault_in_the_address(
    client, member, vault, charlie
):
    theirs = builders.make_vault(
        resource_group=builders.make_resource_group(
            subscription=Subscription.objects.get(memberships__user=charlie), name="fab-rg"
        ),
        name="fabrikam-vault",
    )
    client.force_login(member(Role.READER))
    page = "http://testserver/backup-center/"

    # Asking for charlie's vault: dropped as unknown, so the address keeps to what is shown.
    answer = _refresh(client, {"vault": str(theirs.pk)}, page)
    assert answer.status_code == 200
    assert "HX-Replace-Url" not in answer
    assert "fabrikam-vault" not in answer.content.decode()
    # An address naming charlie's vault reads as "all vaults": the answer puts the Reader's
    # own choice there, never charlie's id.
    answer = _refresh(client, {"vault": str(vault.pk)}, f"{page}?vault={theirs.pk}")
    assert answer["HX-Replace-Url"] == f"{URL}?vault={vault.pk}&show=open"
    assert str(theirs.pk) not in answer["HX-Replace-Url"]
