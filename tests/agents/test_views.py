"""Machine pages: the list, a vault's Protected servers, a machine, rename, unregister and
the installer download — for an owner (alice), a member (bob) and an outsider (charlie)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Machine
from agents.runtime.version import __version__
from portal.models import Role

pytestmark = [pytest.mark.django_db]


def make_machine(vault, name="web-01", **extra) -> Machine:
    return Machine.objects.create(vault=vault, name=name, hostname=name, **extra)


def row(html: str, name: str) -> str:
    return next(r for r in html.split("<tr data-machine=")[1:] if f">{name}<" in r)


@pytest.fixture
def machines(vault):
    now = timezone.now()
    return [
        make_machine(
            vault,
            "web-01",
            os_name="Linux-6.1",
            agent_version=__version__,
            last_seen_at=now - timedelta(seconds=30),
        ),
        make_machine(
            vault,
            "db-01",
            os_name="Linux-5.10",
            agent_version="0.0.9",
            last_seen_at=now - timedelta(minutes=10),
        ),
        make_machine(vault, "gone", unregistered_at=now),
    ]


def test_protected_servers_show_status_version_and_flags(client, alice, vault, machines):
    client.force_login(alice)
    page = client.get(f"/machines/vault/{vault.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Protected servers" in html
    web, db = row(html, "web-01"), row(html, "db-01")
    assert "Online" in web and "Update available" not in web and "Linux-6.1" in web
    assert "Offline" in db and "Update available" in db and "0.0.9" in db
    assert ">gone<" not in html


def test_the_operating_system_is_shown_in_words_even_from_an_older_agent(client, alice, vault):
    current = make_machine(vault, "web-01", os_name="Debian GNU/Linux 12 (bookworm)")
    older = make_machine(vault, "db-01", os_name="Linux-6.1.0-18-amd64-x86_64-with-glibc2.36")
    client.force_login(alice)
    html = client.get(f"/machines/vault/{vault.pk}/").content.decode()
    assert ">Debian GNU/Linux 12 (bookworm)</td>" in row(html, "web-01")
    # The raw string stays in the tooltip only.
    assert (
        'title="Linux-6.1.0-18-amd64-x86_64-with-glibc2.36">Linux (kernel 6.1.0-18-amd64, '
        "x86_64)</td>" in row(html, "db-01")
    )
    page = client.get(f"/machines/{older.pk}/").content.decode()
    assert ">Linux (kernel 6.1.0-18-amd64, x86_64)</dd>" in page
    page = client.get(f"/machines/{current.pk}/").content.decode()
    assert '<dd data-field="os">Debian GNU/Linux 12 (bookworm)</dd>' in page


def test_the_machine_list_shows_only_what_the_user_may_see(client, charlie, alice, vault, machines):
    client.force_login(charlie)
    assert ">web-01<" not in client.get("/machines/").content.decode()
    assert client.get(f"/machines/{machines[0].pk}/").status_code == 404
    assert client.get(f"/machines/vault/{vault.pk}/").status_code == 404
    client.force_login(alice)
    html = client.get("/machines/").content.decode()
    assert ">web-01<" in html and ">db-01<" in html and ">gone<" not in html
    assert ">gone<" in client.get("/machines/?show=all").content.decode()


def test_machine_list_queries_do_not_grow_with_machines(
    client, alice, vault, django_assert_max_num_queries
):
    for i in range(15):
        make_machine(vault, f"host-{i}")
    client.force_login(alice)
    with django_assert_max_num_queries(12):
        assert client.get("/machines/").status_code == 200


def test_the_machine_page_shows_its_essentials(client, alice, machines):
    client.force_login(alice)
    html = client.get(f"/machines/{machines[1].pk}/").content.decode()
    assert "db-01" in html and "Offline" in html and "Linux-5.10" in html
    assert f"the portal offers {__version__}" in html
    assert "Unregister" in html and "Rename" in html


def test_a_reader_sees_but_cannot_rename_or_unregister(client, member, machines):
    bob = member(Role.READER)
    client.force_login(bob)
    machine = machines[0]
    html = client.get(f"/machines/{machine.pk}/").content.decode()
    assert "web-01" in html and "Unregister" not in html
    assert client.post(f"/machines/{machine.pk}/rename/", {"name": "x"}).status_code == 403
    assert (
        client.post(f"/machines/{machine.pk}/unregister/", {"confirm_name": "web-01"}).status_code
        == 403
    )
    machine.refresh_from_db()
    assert machine.name == "web-01" and machine.unregistered_at is None


def role_lookups(queries) -> int:
    return sum('SELECT "portal_membership"."role"' in q["sql"] for q in queries)


@pytest.mark.parametrize(
    ("role", "operate", "manage"),
    [
        (Role.BACKUP_OPERATOR, True, False),
        (Role.CONTRIBUTOR, True, True),
        (Role.READER, False, False),
    ],
)
def test_machine_pages_look_the_role_up_once(
    client, member, vault, machines, role, operate, manage
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(member(role))
    with CaptureQueriesContext(connection) as detail:
        html = client.get(f"/machines/{machines[0].pk}/").content.decode()
    assert ('data-action="backup-now"' in html) is operate and ("Unregister" in html) is manage
    with CaptureQueriesContext(connection) as servers:
        assert client.get(f"/machines/vault/{vault.pk}/").status_code == 200
    assert role_lookups(detail.captured_queries) == 1
    assert role_lookups(servers.captured_queries) == 1


def test_rename_keeps_names_unique(client, member, machines):
    client.force_login(member(Role.CONTRIBUTOR))
    web, _db, _gone = machines
    answer = client.post(f"/machines/{web.pk}/rename/", {"name": "DB-01"})
    assert answer.status_code == 400 and "already has a machine named" in answer.content.decode()
    # An unregistered machine's name is free again.
    assert client.post(f"/machines/{web.pk}/rename/", {"name": "gone"}).status_code == 302
    web.refresh_from_db()
    assert web.name == "gone"


def test_unregister_needs_the_name_and_revokes_the_token(client, alice, vault, redis_broker):
    from tests.agents.conftest import register_directly

    machine, registration = register_directly(vault, alice, "web-01")
    client.force_login(alice)
    assert (
        "no longer work" not in client.get(f"/machines/{machine.pk}/unregister/").content.decode()
    )
    wrong = client.post(f"/machines/{machine.pk}/unregister/", {"confirm_name": "nope"})
    assert wrong.status_code == 400
    done = client.post(f"/machines/{machine.pk}/unregister/", {"confirm_name": "web-01"})
    assert done.status_code == 302 and done.url == f"/machines/vault/{vault.pk}/"
    machine.refresh_from_db()
    assert machine.unregistered_at is not None
    answer = client.post(
        "/api/agent/heartbeat/",
        "{}",
        "application/json",
        HTTP_AUTHORIZATION=f"Bearer {registration.token}",
    )
    assert answer.status_code == 401


def test_heartbeat_marks_the_machine_online(client, alice, vault, redis_broker):
    from tests.agents.conftest import register_directly

    machine, registration = register_directly(vault, alice, "web-01")
    assert not machine.is_online()
    answer = client.post(
        "/api/agent/heartbeat/",
        {"agent_version": "9.9.9", "os_name": "Linux-test", "hostname": "web-01.local"},
        "application/json",
        HTTP_AUTHORIZATION=f"Bearer {registration.token}",
    )
    assert answer.status_code == 200
    machine.refresh_from_db()
    assert machine.is_online() and machine.agent_version == "9.9.9"
    assert machine.os_name == "Linux-test" and not machine.agent_outdated


def test_the_installer_needs_a_signed_in_user(client, alice, db):
    assert client.get("/machines/agent/installer/").status_code == 302
    client.force_login(alice)
    answer = client.get("/machines/agent/installer/")
    assert answer.status_code == 200
    assert answer["Content-Disposition"] == 'attachment; filename="haven-agent-install.sh"'
    assert answer["X-Haven-Agent-Version"] == __version__
    assert answer.content.startswith(b"#!/bin/sh")
