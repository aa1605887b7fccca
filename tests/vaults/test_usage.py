"""Usage samples and the overview's server-drawn storage chart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from vaults import selectors, services, storage
from vaults.chart import usage_chart_svg
from vaults.models import VaultUsageSample

pytestmark = pytest.mark.usefixtures("vault_env")


def test_a_sample_is_written_when_usage_changes(deployed_vault):
    now = timezone.now()
    assert services.vault_usage_record(vault=deployed_vault, bytes_used=0, at=now) is None
    assert services.vault_usage_record(vault=deployed_vault, bytes_used=5000, at=now)
    assert deployed_vault.usage_samples.count() == 2


def test_an_unchanged_value_is_recorded_once_a_day(deployed_vault):
    start = deployed_vault.usage_samples.get().taken_at
    assert (
        services.vault_usage_record(
            vault=deployed_vault, bytes_used=0, at=start + timedelta(hours=23)
        )
        is None
    )
    assert services.vault_usage_record(
        vault=deployed_vault, bytes_used=0, at=start + timedelta(days=1, minutes=1)
    )


def test_the_sampler_measures_the_container(deployed_vault):
    with storage.primary_account().store(deployed_vault.container) as store:
        store.put("data/pack-1", b"x" * 1234)
    assert services.vaults_usage_sample_all() == 1
    assert selectors.vault_current_usage(deployed_vault) == 1234


def test_the_sampler_counts_the_machines_containers_too(deployed_vault):
    from agents.models import Machine

    account = storage.primary_account()
    machine = Machine.objects.create(vault=deployed_vault, name="web-01", container="machine-web01")
    account.create_container(machine.container)
    with account.store(machine.container) as store:
        store.put("data/ab/pack", b"y" * 4000)
    with account.store(deployed_vault.container) as store:
        store.put("meta", b"z" * 100)
    services.vaults_usage_sample_all()
    assert selectors.vault_current_usage(deployed_vault) == 4100


def test_the_periodic_task_is_registered():
    from portal.celery import app

    entry = app.conf.beat_schedule["vaults.sample_usage"]
    assert entry["task"] == "vaults.sample_usage" and entry["options"]["queue"] == "portal"


def test_samples_for_the_chart_include_the_one_before_the_window(deployed_vault):
    now = timezone.now()
    VaultUsageSample.objects.all().delete()
    old = VaultUsageSample.objects.create(
        vault=deployed_vault, taken_at=now - timedelta(days=60), bytes_used=10
    )
    older = VaultUsageSample.objects.create(
        vault=deployed_vault, taken_at=now - timedelta(days=90), bytes_used=5
    )
    recent = VaultUsageSample.objects.create(
        vault=deployed_vault, taken_at=now - timedelta(days=2), bytes_used=20
    )
    assert selectors.vault_usage_samples(deployed_vault, days=30) == [old, recent]
    assert older not in selectors.vault_usage_samples(deployed_vault, days=30)


class S:
    def __init__(self, taken_at, bytes_used):
        self.taken_at, self.bytes_used = taken_at, bytes_used


def test_the_chart_is_an_svg_step_line_to_now():
    now = timezone.now()
    svg = usage_chart_svg(
        [S(now - timedelta(days=10), 1_000_000), S(now - timedelta(days=3), 3_000_000)],
        now=now,
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'class="line"' in svg and 'class="area"' in svg
    points = svg.split('class="line" points="')[1].split('"')[0].split()
    assert len(points) == 4  # first, step across, second, carried to now
    assert points[1].split(",")[1] == points[0].split(",")[1]  # a step, not a slope
    assert "MB" in svg  # the y axis is labelled in bytes


def test_an_empty_chart_still_draws_its_axes():
    svg = usage_chart_svg([], now=timezone.now())
    assert 'class="line"' not in svg and 'class="axis"' in svg
