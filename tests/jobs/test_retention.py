"""Retention selection on the reference's worked examples, and the ad hoc table (pure)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs import retention
from jobs.policy_rules import default_spec
from jobs.schedule import Schedule, occurrences

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NOW = datetime(2024, 6, 15, 12, 0, tzinfo=AMSTERDAM)  # a Saturday


def reference_policy(**changes) -> dict:
    """Daily at 00:00 and 18:00; daily 7 days, Saturdays 4 weeks, last Saturday of the month
    12 months, last Saturday of March 10 years: the reference's screenshot."""
    spec = default_spec()
    spec["items"] = ["/data"]
    spec.update(changes)
    return spec


def simulate(spec, tz, start, end):
    runs = occurrences(Schedule.from_spec(spec), tz, start, end)
    return [(at, retention.tag_point(spec, tz, adhoc=False, tagged_for=at)) for at in runs]


def kept_at(points, now):
    expired = retention.expired(
        [retention.Point(at, at, tagging.expires_at) for at, tagging in points], now
    )
    return [(at, tagging) for at, tagging in points if at not in expired]


def last_saturday(year: int, month: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - 5) % 7)


@pytest.fixture(scope="module")
def history():
    spec = reference_policy()
    return simulate(spec, AMSTERDAM, datetime(2012, 1, 1, tzinfo=UTC), NOW.astimezone(UTC))


def test_daily_7_keeps_the_last_seven_days(history):
    kept = kept_at(history, NOW)
    daily = sorted(at.astimezone(AMSTERDAM) for at, t in kept if t.until[retention.DAILY_TAG] > NOW)
    assert len(daily) == 14
    assert daily[0] == datetime(2024, 6, 8, 18, 0, tzinfo=AMSTERDAM)
    assert daily[-1] == datetime(2024, 6, 15, 0, 0, tzinfo=AMSTERDAM)


def test_weekly_4_keeps_saturdays_of_the_last_four_weeks(history):
    kept = kept_at(history, NOW)
    weekly = {
        at.astimezone(AMSTERDAM).date()
        for at, t in kept
        if retention.WEEKLY_TAG in t.until and t.until[retention.WEEKLY_TAG] > NOW
    }
    assert weekly == {
        date(2024, 5, 18),
        date(2024, 5, 25),
        date(2024, 6, 1),
        date(2024, 6, 8),
        date(2024, 6, 15),
    }
    assert all(day.weekday() == 5 for day in weekly)


def test_monthly_12_keeps_the_last_saturdays_of_twelve_months(history):
    kept = kept_at(history, NOW)
    monthly = {
        at.astimezone(AMSTERDAM).date()
        for at, t in kept
        if retention.MONTHLY_TAG in t.until and t.until[retention.MONTHLY_TAG] > NOW
    }
    months = [(2023, m) for m in range(6, 13)] + [(2024, m) for m in range(1, 6)]
    assert monthly == {last_saturday(y, m) for y, m in months}


def test_yearly_10_keeps_the_last_saturday_of_march_for_ten_years(history):
    kept = kept_at(history, NOW)
    yearly = {
        at.astimezone(AMSTERDAM).date()
        for at, t in kept
        if retention.YEARLY_TAG in t.until and t.until[retention.YEARLY_TAG] > NOW
    }
    assert yearly == {last_saturday(y, 3) for y in range(2015, 2025)}


def test_nothing_else_is_kept(history):
    kept = kept_at(history, NOW)
    # 14 daily + Saturdays not already daily (05-18 18:00, 05-25 x2, 06-01 x2, 06-08 00:00) = 6
    # + 11 older month-ends x2 (May 25 is already counted) + 9 older Marches x2 (2024 is a month-end)
    assert len(kept) == 14 + 6 + 11 * 2 + 9 * 2


def test_the_latest_point_is_never_removed():
    old = datetime(2020, 1, 1, tzinfo=UTC)
    points = [
        retention.Point("a", old, old + timedelta(days=1)),
        retention.Point("b", old + timedelta(hours=1), old),
    ]
    assert retention.expired(points, datetime(2024, 1, 1, tzinfo=UTC)) == {"a"}


def test_month_rule_days_and_last_day():
    rule = {"mode": "day", "days": [15, retention.LAST_DAY]}
    assert retention.matches_month_rule(rule, date(2024, 2, 15))
    assert retention.matches_month_rule(rule, date(2024, 2, 29))
    assert not retention.matches_month_rule(rule, date(2024, 2, 28))
    second_tuesday = {"mode": "week", "week": "second", "weekdays": [1]}
    assert retention.matches_month_rule(second_tuesday, date(2024, 6, 11))
    assert not retention.matches_month_rule(second_tuesday, date(2024, 6, 4))


def test_add_months_clamps_the_day():
    assert retention.add_months(datetime(2024, 1, 31), 1) == datetime(2024, 2, 29)
    assert retention.add_months(datetime(2024, 3, 30), 12 * 10) == datetime(2034, 3, 30)


# --- ad hoc: the reference's table -------------------------------------------------------
def test_adhoc_with_a_daily_schedule_gets_the_daily_retention():
    at = datetime(2024, 6, 12, 10, tzinfo=UTC)  # a Wednesday
    tagging = retention.tag_point(reference_policy(), AMSTERDAM, adhoc=True, tagged_for=at)
    assert tagging.tags == (retention.DAILY_TAG,)
    assert tagging.expires_at == at + timedelta(days=7)


def test_adhoc_on_a_saturday_is_not_a_weekly_point():
    at = datetime(2024, 6, 15, 10, tzinfo=UTC)
    tagging = retention.tag_point(reference_policy(), AMSTERDAM, adhoc=True, tagged_for=at)
    assert tagging.tags == (retention.DAILY_TAG,)


def test_adhoc_with_a_weekly_schedule_is_kept_one_day():
    spec = reference_policy(frequency="weekly", weekdays=[5])
    spec["retention"]["daily"] = None
    at = datetime(2024, 6, 12, 10, tzinfo=UTC)
    tagging = retention.tag_point(spec, AMSTERDAM, adhoc=True, tagged_for=at)
    assert tagging.tags == (retention.ADHOC_TAG,)
    assert tagging.expires_at == at + timedelta(days=1)


def test_adhoc_after_a_failed_long_term_scheduled_backup_takes_its_tags():
    failed = datetime(2024, 3, 30, 0, 0, tzinfo=AMSTERDAM)  # last Saturday of March
    at = datetime(2024, 3, 30, 9, 0, tzinfo=AMSTERDAM)
    tagging = retention.tag_point(
        reference_policy(), AMSTERDAM, adhoc=True, tagged_for=at, inherited_from=failed
    )
    assert set(tagging.tags) == {
        retention.DAILY_TAG,
        retention.WEEKLY_TAG,
        retention.MONTHLY_TAG,
        retention.YEARLY_TAG,
    }
    assert tagging.expires_at == datetime(2034, 3, 30, 0, 0, tzinfo=AMSTERDAM)


def test_retain_till_replaces_the_default_adhoc_retention():
    at = datetime(2024, 6, 12, 10, tzinfo=UTC)
    tagging = retention.tag_point(
        reference_policy(), AMSTERDAM, adhoc=True, tagged_for=at, retain_until=date(2024, 12, 31)
    )
    assert tagging.tags == (retention.RETAIN_TILL_TAG,)
    assert tagging.expires_at == datetime(2025, 1, 1, 0, 0, tzinfo=AMSTERDAM)


def test_retain_till_can_also_be_shorter_than_the_daily_retention():
    at = datetime(2024, 6, 12, 10, tzinfo=UTC)
    tagging = retention.tag_point(
        reference_policy(), AMSTERDAM, adhoc=True, tagged_for=at, retain_until=date(2024, 6, 13)
    )
    assert tagging.expires_at == datetime(2024, 6, 14, 0, 0, tzinfo=AMSTERDAM)


# --- preview ------------------------------------------------------------------------------
def test_preview_of_the_reference_policy():
    preview = retention.preview(reference_policy(), AMSTERDAM, datetime(2024, 1, 1, 12, tzinfo=UTC))
    assert preview.created == 2 * 365
    assert preview.counts[retention.DAILY_TAG] == 14
    assert preview.counts[retention.YEARLY_TAG] == 2  # the two March 2024 points
    assert preview.counts[retention.WEEKLY_TAG] == 8
    assert preview.counts[retention.MONTHLY_TAG] == 24
    assert preview.kept[0].at > preview.kept[-1].at
    assert preview.peak >= len(preview.kept)
