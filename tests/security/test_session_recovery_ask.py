"""Attack on Recover Data's questions: a link or image on another site (or a browser's
prefetch) makes a signed-in user's browser send an agent a browse or search task."""

# The Recover Data cast's fixtures are imported, so test arguments "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

from django.test import Client
from django.urls import reverse

from tests.recovery.conftest import _env, points, sent, web01  # noqa: F401 - fixtures


def _ask(web01, kind="browse"):
    return reverse("recovery:ask", args=[web01.pk, web01.pk, kind])


def test_a_get_from_a_link_sends_the_agent_nothing(client, alice, web01, points, sent):
    client.force_login(alice)
    response = client.get(_ask(web01), {"rp": points[0].snapshot_id, "path": "/home"})
    assert response.status_code == 405
    search = client.get(_ask(web01, "search"), {"q": "*.pdf"})
    assert search.status_code == 405
    assert sent == []


def test_a_cross_site_post_without_the_csrf_token_sends_the_agent_nothing(
    alice, web01, points, sent
):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    response = browser.post(_ask(web01), {"rp": points[0].snapshot_id, "path": "/home"})
    assert response.status_code == 403
    assert sent == []


def test_the_wizard_asks_with_a_post_and_its_token(alice, web01, points, sent):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    page = browser.get(reverse("recovery:wizard", args=[web01.pk, web01.pk]))
    token = page.cookies["csrftoken"].value
    response = browser.post(
        _ask(web01),
        {"rp": points[0].snapshot_id, "path": "/home"},
        HTTP_X_CSRFTOKEN=token,
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert "Asking web-01" in response.content.decode()
    assert [(m, kw["path"]) for m, _, kw in sent] == [("web-01", "/home")]
