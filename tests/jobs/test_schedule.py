"""Schedule computation in the machine's zone, DST done right (pure, no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.schedule import DAILY, WEEKLY, Schedule, describe, is_gap, next_run, occurrences, resolve

NEW_YORK = ZoneInfo("America/New_York")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def daily(*times: str) -> Schedule:
    return Schedule.from_spec({"frequency": DAILY, "times": list(times)})


def test_a_0130_backup_on_a_fall_back_day_runs_once_at_the_first_0130():
    runs = occurrences(daily("01:30"), NEW_YORK, utc(2024, 11, 3, 0), utc(2024, 11, 4, 0))
    assert runs == [utc(2024, 11, 3, 5, 30)]  # 01:30 EDT, not 01:30 EST an hour later


def test_a_0230_backup_on_a_spring_forward_day_runs_when_the_clocks_jump():
    runs = occurrences(daily("02:30"), NEW_YORK, utc(2024, 3, 10, 0), utc(2024, 3, 11, 0))
    assert runs == [utc(2024, 3, 10, 7, 0)]
    assert runs[0].astimezone(NEW_YORK).time() == time(3, 0)


def test_two_times_inside_one_gap_run_once():
    runs = occurrences(
        daily("02:00", "02:45"), AMSTERDAM, utc(2024, 3, 31, 0), utc(2024, 3, 31, 12)
    )
    assert [r.astimezone(AMSTERDAM).time() for r in runs] == [time(3, 0)]


def test_a_day_that_does_not_exist_runs_its_backup_at_the_start_of_the_next():
    apia = ZoneInfo("Pacific/Apia")  # skipped 30 December 2011
    at = resolve(date(2011, 12, 30), time(9, 0), apia)
    assert at.astimezone(apia) == datetime(2011, 12, 31, 0, 0, tzinfo=apia)


def test_half_hour_dst_shift_of_lord_howe():
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    at = resolve(date(2024, 10, 6), time(2, 15), lord_howe)
    assert at.astimezone(lord_howe).time() == time(2, 30)


def test_weekly_runs_only_on_chosen_days():
    schedule = Schedule.from_spec(
        {"frequency": WEEKLY, "times": ["09:30", "01:00"], "weekdays": [2, 6]}
    )
    runs = occurrences(schedule, UTC, utc(2024, 6, 2, 12), utc(2024, 6, 16, 12))  # Sun to Sun
    local = [(r.weekday(), r.time()) for r in runs]
    assert local == [
        (2, time(1)),
        (2, time(9, 30)),
        (6, time(1)),
        (6, time(9, 30)),
        (2, time(1)),
        (2, time(9, 30)),
        (6, time(1)),
        (6, time(9, 30)),
    ]
    assert describe(schedule) == "Every Wednesday and Sunday at 01:00, 09:30"


def test_next_run_is_strictly_after():
    assert next_run(daily("18:00"), UTC, utc(2024, 1, 1, 18)) == utc(2024, 1, 2, 18)


ZONES = sorted(
    z
    for z in available_timezones()
    if "/" in z and not z.startswith(("Etc/", "SystemV/", "posix/", "right/"))
)
times = st.lists(
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45])),
    min_size=1,
    max_size=3,
    unique=True,
)
moments = st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2037, 12, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone=st.sampled_from(ZONES),
    at=times,
    start=moments,
    days=st.integers(1, 20),
    cut=st.floats(0, 1),
)
def test_splitting_an_interval_gives_the_same_runs(zone, at, start, days, cut):
    """What one tick sees over (a, c] equals two ticks over (a, b] and (b, c]: no run is lost
    or doubled however the ticks fall."""
    tz = ZoneInfo(zone)
    schedule = Schedule(DAILY, tuple(sorted(at)))
    end = start + timedelta(days=days)
    middle = start + (end - start) * cut
    whole = occurrences(schedule, tz, start, end)
    assert whole == occurrences(schedule, tz, start, middle) + occurrences(
        schedule, tz, middle, end
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zone=st.sampled_from(ZONES), at=times, start=moments)
def test_each_local_day_runs_each_time_once_at_that_wall_time_or_right_after_a_gap(zone, at, start):
    tz = ZoneInfo(zone)
    schedule = Schedule(DAILY, tuple(sorted(at)))
    runs = occurrences(schedule, tz, start, start + timedelta(days=4))
    assert runs == sorted(set(runs))
    for run in runs:
        local = run.astimezone(tz)
        wall = local.time().replace(second=0)
        if wall in schedule.times:
            continue
        # Not a scheduled wall time: it must be the first instant after a gap that swallowed
        # a scheduled time on this day or the day before.
        just_before = (run - timedelta(seconds=1)).astimezone(tz)
        assert just_before.utcoffset() != local.utcoffset(), (zone, run)
    # Every scheduled local time that exists and is unambiguous appears exactly once.
    first = runs[0].astimezone(tz).date() if runs else None
    if first is not None:
        for t in schedule.times:
            local = datetime.combine(first + timedelta(days=1), t, tzinfo=tz)
            instant = local.astimezone(UTC)
            if start < instant <= start + timedelta(days=4) and not is_gap(local):
                assert runs.count(instant) == 1


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(date(1995, 1, 1), date(2037, 12, 1)),
    at=st.sampled_from([time(0, 30), time(1, 30), time(2, 30), time(3, 0)]),
)
def test_resolved_instants_show_the_wall_time_or_a_later_one_within_a_day(zone, day, at):
    tz = ZoneInfo(zone)
    instant = resolve(day, at, tz)
    local = instant.astimezone(tz).replace(tzinfo=None)
    wanted = datetime.combine(day, at)
    assert wanted <= local <= wanted + timedelta(days=1)
