"""Policy validation names every failing rule next to its field (pure)."""

from __future__ import annotations

from django.http import QueryDict

from jobs import policy_rules


def form(**fields) -> QueryDict:
    data = QueryDict(mutable=True)
    base = {
        "items": "/home\n/etc",
        "frequency": "daily",
        "times": ["00:00", "18:00"],
        "daily_enabled": "on",
        "daily_days": "7",
        "initial_backup": "online",
    }
    base.update(fields)
    for key, value in base.items():
        if value is None:
            continue
        data.setlist(key, value if isinstance(value, list) else [value])
    return data


def test_a_valid_form_gives_a_canonical_spec():
    spec, problems = policy_rules.parse_form(
        form(exclude_types="ISO, .tmp", times=["18:00", "00:00"])
    )
    assert problems == {}
    assert spec["times"] == ["00:00", "18:00"]
    assert spec["exclude_types"] == [".iso", ".tmp"]
    assert spec["retention"]["daily"] == {"days": 7}
    assert policy_rules.spec_hash(spec) == policy_rules.spec_hash(dict(reversed(spec.items())))


def test_every_failing_rule_is_named_per_field():
    _, problems = policy_rules.parse_form(
        form(
            items="relative/path",
            times=["25:00", "01:00", "02:00", "03:00"],
            daily_days="10000",
            weekly_enabled="on",
            weekly_weeks="5164",
            monthly_enabled="on",
            monthly_mode="day",
            monthly_months="0",
            yearly_enabled="on",
            yearly_mode="week",
            yearly_week="fifth",
            yearly_years="100",
            initial_backup="pigeon",
            exclude_types="not a type!",
        )
    )
    assert "not an absolute path" in problems["items"][0]
    assert any("at most 3" in p for p in problems["times"])
    assert any("'25:00' is not a time" in p for p in problems["times"])
    assert "9,999" in problems["daily_days"][0]
    assert "5,163" in problems["weekly_weeks"][0]
    assert "Choose the day of the week" in problems["weekly_weekdays"][0]
    assert problems["monthly_days"] == ["Choose at least one day of the month."]
    assert "1,188" in problems["monthly_months"][0]
    assert problems["yearly_week"]
    assert problems["yearly_weekdays"]
    assert problems["yearly_months"] == ["Choose at least one month."]
    assert "99" in problems["yearly_years"][0]
    assert problems["initial_backup"]
    assert problems["exclude_types"]


def test_limits_are_inclusive():
    _, problems = policy_rules.parse_form(
        form(
            daily_days="9999",
            weekly_enabled="on",
            weekly_weekdays="5",
            weekly_weeks="5163",
            monthly_enabled="on",
            monthly_mode="day",
            monthly_days=["1", "0"],
            monthly_months="1188",
            yearly_enabled="on",
            yearly_months="3",
            yearly_mode="week",
            yearly_week="last",
            yearly_weekdays="5",
            yearly_years="99",
        )
    )
    assert problems == {}


def test_a_weekly_schedule_needs_days_and_weekly_retention_and_no_daily():
    _, problems = policy_rules.parse_form(form(frequency="weekly", weekdays=None))
    assert problems["weekdays"]
    assert "weekly schedule has no daily backups" in problems["daily_days"][0]
    assert "needs a weekly retention" in problems["weekly_weeks"][0]


def test_a_weekly_schedule_keeps_its_own_days_weekly():
    spec, problems = policy_rules.parse_form(
        form(
            frequency="weekly",
            weekdays=["2", "6"],
            daily_enabled=None,
            weekly_enabled="on",
            weekly_weekdays="0",
            weekly_weeks="4",
            monthly_enabled="on",
            monthly_mode="week",
            monthly_week="last",
            monthly_weekdays="5",
            monthly_months="12",
        )
    )
    assert spec["retention"]["weekly"]["weekdays"] == [2, 6]
    assert "No backup is scheduled on Saturday" in problems["monthly_weekdays"][0]


def test_no_retention_at_all_is_refused():
    _, problems = policy_rules.parse_form(form(daily_enabled=None))
    assert problems["retention"] == ["Turn on at least one retention range."]


def test_describe_retention_reads_like_the_reference():
    lines = policy_rules.describe_retention(policy_rules.default_spec())
    assert lines == [
        "Daily backups are kept for 7 days.",
        "Backups on Saturday are kept for 4 weeks.",
        "Backups on the last Saturday are kept for 12 months.",
        "Backups on the last Saturday of March are kept for 10 years.",
    ]
