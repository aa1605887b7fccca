"""The apps as one product: every internal link on the pages of a vault with a machine, a
recovery point, jobs and an alert leads somewhere (no 404, no 500), and the menus link the
apps to each other."""

from __future__ import annotations

import re
from collections import deque
from datetime import timedelta
from html import unescape
from urllib.parse import urldefrag, urlsplit

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.models import Alert, Job, RecoveryPoint
from portal.models import Role
from tests.jobs.conftest import make_machine

pytestmark = pytest.mark.django_db

HREF = re.compile(r"""\shref=(["'])(?P<url>.*?)\1""")
# Links that change state on GET, or are large downloads rather than pages.
SKIP = ("/signout/", "/static/", "/machines/agent/installer/")
MAX_PAGES = 400


@pytest.fixture
def estate(alice, vault, machine, policy):
    """A vault with a backed-up machine, a second machine, jobs of every kind and an alert."""
    other = make_machine(vault, "db-01", online=False)
    now = timezone.now()
    backup = services.backup_start(machine=machine, user=alice)
    services.job_finish(job=backup, status="completed")
    point = RecoveryPoint.objects.create(
        machine=machine,
        vault=vault,
        job=backup,
        snapshot_id="a" * 32,
        manifest_blob="snapshots/" + "a" * 32,
        created_at=now - timedelta(hours=1),
        tagged_for=now - timedelta(hours=1),
        kind=RecoveryPoint.Kind.ADHOC,
        logical_bytes=4096,
        stored_bytes=2048,
        file_count=3,
        retention_tags=["daily"],
    )
    details = {
        "source_machine": str(machine.pk),
        "source_name": machine.name,
        "recovery_point": point.snapshot_id,
        "recovery_point_time": point.created_at.isoformat(),
        "items": 2,
    }
    restore = Job.objects.create(
        vault=vault,
        machine=other,
        operation=Job.Operation.RESTORE,
        status=Job.Status.WARNING,
        created_by=alice,
        started_at=now - timedelta(minutes=5),
        ended_at=now,
        warnings=[{"path": "/srv/data/locked.db", "reason": "Permission denied"}],
        warning_count=1,
        details={
            **details,
            "kind": "restore",
            "location": "another",
            "on_conflict": "overwrite",
            "restore_permissions": False,
        },
    )
    download = Job.objects.create(
        vault=vault,
        machine=machine,
        operation=Job.Operation.RESTORE,
        status=Job.Status.RUNNING,
        created_by=alice,
        started_at=now,
        details={**details, "kind": "download", "max_bytes": 64 * 1024 * 1024},
    )
    Alert.objects.create(
        vault=vault,
        machine=other,
        severity=Alert.Severity.WARNING,
        kind=Alert.Kind.NO_RECENT_BACKUP,
        message="db-01 has no recovery point.",
    )
    return {
        "vault": vault,
        "machine": machine,
        "other": other,
        "point": point,
        "backup": backup,
        "restore": restore,
        "download": download,
    }


def _links(html: str) -> set[str]:
    out = set()
    for match in HREF.finditer(html):
        url = urldefrag(unescape(match["url"]))[0]
        if url.startswith("/") and not url.startswith("//") and not url.startswith(SKIP):
            out.add(url)
    return out


def test_every_internal_link_of_a_vaults_pages_resolves(client, alice, estate):
    client.force_login(alice)
    vault, machine = estate["vault"], estate["machine"]
    start = [
        "/",
        reverse("vaults:overview", args=[vault.pk]),
        reverse("agents:detail", args=[machine.pk]),
        reverse("jobs:detail", args=[estate["restore"].pk]),
        reverse("jobs:detail", args=[estate["download"].pk]),
        reverse("recovery:wizard", args=[machine.pk, machine.pk]),
    ]
    seen: dict[str, int] = {}
    broken: list[str] = []
    queue = deque((url, "start") for url in start)
    while queue and len(seen) < MAX_PAGES:
        url, found_on = queue.popleft()
        if url in seen:
            continue
        response = client.get(url)
        seen[url] = response.status_code
        if response.status_code >= 400:
            broken.append(f"{url} ({response.status_code}) linked from {found_on}")
            continue
        if response.status_code != 200 or "text/html" not in response.get("Content-Type", ""):
            continue
        # Follow links only within the estate's own pages, not into every list of the portal.
        path = urlsplit(url).path
        if (
            path != "/"
            and not any(str(pk) in url for pk in (vault.pk, machine.pk, estate["other"].pk))
            and not path.startswith("/jobs/")
        ):
            continue
        for link in _links(response.content.decode()):
            if link not in seen:
                queue.append((link, url))
    assert not broken, "\n".join(broken)
    assert len(seen) > 40  # the crawl really went through the vault's pages


def test_the_vault_menu_links_the_apps(client, alice, estate):
    vault = estate["vault"]
    client.force_login(alice)
    page = client.get(reverse("vaults:overview", args=[vault.pk])).content.decode()
    menu = page[
        page.index('class="resource-menu"') : page.index("</nav>", page.index("resource-menu"))
    ]
    for url in (
        reverse("jobs:backup_items", args=[vault.pk]),
        reverse("jobs:vault_alerts", args=[vault.pk]),
        reverse("agents:vault-servers", args=[vault.pk]),
        f"{reverse('jobs:list')}?vault={vault.pk}",
        f"{reverse('recovery:start')}?vault={vault.pk}",
    ):
        assert f'href="{url}"' in menu, url
    for url, section in (
        (reverse("jobs:backup_items", args=[vault.pk]), "Backup items"),
        (reverse("jobs:vault_alerts", args=[vault.pk]), "Backup Alerts"),
        (reverse("agents:vault-servers", args=[vault.pk]), "Protected servers"),
    ):
        html = client.get(url).content.decode()
        assert re.search(rf'class="active"[^>]*>{section}</a>', html), section


def test_the_machine_page_links_its_backup_pages(client, alice, estate):
    machine = estate["machine"]
    client.force_login(alice)
    page = client.get(reverse("agents:detail", args=[machine.pk])).content.decode()
    for url in (
        reverse("jobs:backup_now", args=[machine.pk]),
        reverse("jobs:policy", args=[machine.pk]),
        reverse("jobs:recovery_points", args=[machine.pk]),
        f"{reverse('recovery:start')}?source={machine.pk}",
    ):
        assert f'href="{url}"' in page, url
    assert "Version 1" in page  # the policy, named on the machine's essentials


def test_a_reader_sees_the_machine_page_without_backup_commands(client, member, estate):
    client.force_login(member(Role.READER))
    page = client.get(reverse("agents:detail", args=[estate["machine"].pk])).content.decode()
    assert 'data-action="backup-now"' not in page and 'data-action="recover"' not in page


def test_recover_data_from_a_vault_offers_only_its_machines(client, alice, estate, subscription):
    from portal.models import ResourceGroup
    from vaults.models import Vault

    rg = ResourceGroup.objects.get(subscription=subscription)
    elsewhere = Vault.objects.create(
        subscription=subscription,
        resource_group=rg,
        name="vault-two",
        location="West Europe",
        state=Vault.State.READY,
    )
    make_machine(elsewhere, "far-01")
    client.force_login(alice)
    page = client.get(reverse("recovery:start"), {"vault": estate["vault"].pk}).content.decode()
    assert "web-01" in page and "db-01" in page and "far-01" not in page
    assert client.get(reverse("recovery:start"), {"vault": "nope"}).status_code == 404
    assert client.get(reverse("recovery:start"), {"source": "nope"}).status_code == 404


def test_a_restore_job_speaks_of_restoring(client, alice, estate):
    client.force_login(alice)
    page = client.get(reverse("jobs:detail", args=[estate["restore"].pk])).content.decode()
    assert "These files could not be restored" in page
    assert "were skipped" not in page
    assert "Recovered onto" in page and "db-01" in page
    assert "Source machine" in page and "web-01" in page
    assert "2 files or folders" in page
    assert "Another location" in page
    assert "Overwrite the existing versions" in page


def test_cancelling_a_restore_keeps_what_was_restored(client, alice, estate):
    client.force_login(alice)
    download = client.get(reverse("jobs:detail", args=[estate["download"].pk])).content.decode()
    assert reverse("recovery:download_status", args=[estate["download"].pk]) in download
    assert "no archive is made" in download
    estate["restore"].status = Job.Status.RUNNING
    estate["restore"].save()
    page = client.get(reverse("jobs:detail", args=[estate["restore"].pk])).content.decode()
    assert "files restored so far are kept" in page and "no recovery point" not in page
    backup = services.backup_start(machine=estate["other"], user=alice)
    page = client.get(reverse("jobs:detail", args=[backup.pk])).content.decode()
    assert "no recovery point is made" in page


def test_an_online_status_pill_knows_when_to_check_again(client, alice, estate):
    client.force_login(alice)
    machine = estate["machine"]
    page = client.get(reverse("agents:vault-servers", args=[estate["vault"].pk])).content.decode()
    assert f'data-status-src="{reverse("agents:status", args=[machine.pk])}"' in page
    assert 'data-offline-after="180"' in page and "js/agents.js" in page
    # An offline machine is not polled: coming back online is pushed.
    pill = re.search(rf'<span[^>]*id="machine-status-{estate["other"].pk}"[^>]*>', page)[0]
    assert "data-status-src" not in pill
    machine.last_seen_at = timezone.now() - timedelta(minutes=10)
    machine.save()
    fragment = client.get(reverse("agents:status", args=[machine.pk])).content.decode()
    assert "Offline" in fragment
