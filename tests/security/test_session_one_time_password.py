"""Attacks with a one-time password: whoever saw it over the Owner's shoulder signs in
first and uses the account before its user replaces the password."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from portal import services
from portal.models import Role
from tests.support import builders


@pytest.fixture
def erin(subscription):
    """A Backup Operator on Contoso, created by an Owner: signed in with her one-time password."""
    user, password = services.user_create(
        username="erin",
        full_name="Erin New",
        email="",
        subscription=subscription,
        role=Role.BACKUP_OPERATOR,
    )
    client = Client()
    signed_in = client.post(reverse("portal:login"), {"username": "erin", "password": password})
    assert signed_in.status_code == 302
    user.client, user.password = client, password
    return user


def test_a_one_time_password_opens_no_vault_list_installer_or_credentials(erin, resource_group):
    vault = builders.make_vault(resource_group=resource_group)
    client = erin.client
    change = reverse("portal:password-change")
    for response in [
        client.get(reverse("vaults:list")),
        client.get(reverse("portal:home")),
        client.get(reverse("agents:installer")),
        client.post(reverse("vaults:credentials-download", args=[vault.pk]), {"agent_ready": "on"}),
    ]:
        assert response.status_code == 302
        assert response["Location"] == change
        assert "Content-Disposition" not in response
    assert not vault.credentials.exists()


def test_an_htmx_request_with_a_one_time_password_is_refused(erin):
    response = erin.client.get(reverse("portal:search"), {"q": "Contoso"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert response["HX-Redirect"] == reverse("portal:password-change")
    assert "Contoso" not in response.content.decode()


def test_after_the_change_the_account_works(erin):
    client = erin.client
    assert client.get(reverse("portal:password-change")).status_code == 200
    changed = client.post(
        reverse("portal:password-change"),
        {
            "old_password": erin.password,
            "new_password1": "erin's own long phrase 7",
            "new_password2": "erin's own long phrase 7",
        },
    )
    assert changed.status_code == 302
    assert client.get(reverse("vaults:list")).status_code == 200
    assert client.get(reverse("agents:installer")).status_code == 200
