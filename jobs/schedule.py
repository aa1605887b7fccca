"""When a policy's backups run: wall-clock times in the machine's own time zone.

Pure functions, no Django. The rules for daylight-saving changes (the reference ignores DST;
we don't):

- A wall time that happens twice (01:30 on a fall-back day) runs once, at its first
  occurrence.
- A wall time that does not exist (02:30 on a spring-forward day) runs at the next valid
  time: the instant the clocks jump (03:00 local). Several scheduled times inside one gap
  collapse into that one instant.

``occurrences(schedule, zone, after, until)`` lists the instants in ``(after, until]``, so
splitting an interval at any point gives the same runs as the whole interval: the beat tick
relies on that to never run a backup twice or skip one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

DAILY = "daily"
WEEKLY = "weekly"
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Schedule:
    frequency: str  # DAILY or WEEKLY
    times: tuple[time, ...]  # wall-clock times, at most three
    weekdays: frozenset[int] = frozenset(range(7))  # Monday = 0; used when WEEKLY

    @classmethod
    def from_spec(cls, spec: dict) -> Schedule:
        times = tuple(sorted(parse_time(t) for t in spec.get("times", [])))
        weekdays = frozenset(int(d) for d in spec.get("weekdays", []))
        if spec.get("frequency") == WEEKLY:
            return cls(WEEKLY, times, weekdays)
        return cls(DAILY, times, frozenset(range(7)))

    def runs_on(self, day: date) -> bool:
        return self.frequency == DAILY or day.weekday() in self.weekdays


def parse_time(value: str | time) -> time:
    if isinstance(value, time):
        return value
    hours, _, minutes = str(value).partition(":")
    return time(int(hours), int(minutes))


def zone(name: str) -> tzinfo:
    """The machine's zone; an unknown name falls back to UTC rather than stopping backups."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return UTC


def is_gap(local: datetime) -> bool:
    """True when the aware wall time ``local`` does not exist in its zone."""
    naive = local.replace(tzinfo=None)
    return local.astimezone(UTC).astimezone(local.tzinfo).replace(tzinfo=None) != naive


def resolve(day: date, at: time, tz: tzinfo) -> datetime:
    """The UTC instant a wall time on ``day`` runs at, following the DST rules above."""
    local = datetime.combine(day, at, tzinfo=tz)  # fold=0: the first of two occurrences
    if not is_gap(local):
        return local.astimezone(UTC)
    # In a gap, fold=1 maps to an instant before the jump and fold=0 to one after it:
    # binary-search the jump itself (offsets change on whole seconds).
    low = local.replace(fold=1).astimezone(UTC)
    high = local.replace(fold=0).astimezone(UTC)
    if low > high:
        low, high = high, low
    after_offset = high.astimezone(tz).utcoffset()
    while (high - low) > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(tz).utcoffset() == after_offset:
            high = middle
        else:
            low = middle
    return high


def occurrences(schedule: Schedule, tz: tzinfo, after: datetime, until: datetime) -> list[datetime]:
    """Every run instant (UTC) in ``(after, until]``, ascending and unique."""
    if until <= after or not schedule.times:
        return []
    found: set[datetime] = set()
    # Local dates can differ from UTC dates by up to ~26 hours either way (and gaps move a
    # run forward by up to a day, as in Samoa's skipped 2011-12-30), so look one day wider.
    first = after.astimezone(tz).date() - timedelta(days=2)
    last = until.astimezone(tz).date() + timedelta(days=1)
    for day in _days(first, last):
        if not schedule.runs_on(day):
            continue
        for at in schedule.times:
            instant = resolve(day, at, tz)
            if after < instant <= until:
                found.add(instant)
    return sorted(found)


def next_run(schedule: Schedule, tz: tzinfo, after: datetime) -> datetime | None:
    """The first run strictly after ``after`` (looks up to two weeks ahead)."""
    if not schedule.times or (schedule.frequency == WEEKLY and not schedule.weekdays):
        return None
    runs = occurrences(schedule, tz, after, after + timedelta(days=15))
    return runs[0] if runs else None


def previous_run(schedule: Schedule, tz: tzinfo, before: datetime) -> datetime | None:
    """The last run at or before ``before`` (looks up to two weeks back)."""
    runs = occurrences(schedule, tz, before - timedelta(days=15), before)
    return runs[-1] if runs else None


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def describe(schedule: Schedule) -> str:
    """'Daily at 00:00, 18:00' / 'Every Saturday and Wednesday at 09:30'."""
    times = ", ".join(t.strftime("%H:%M") for t in schedule.times) or "no time"
    if schedule.frequency == DAILY:
        return f"Daily at {times}"
    days = [WEEKDAY_NAMES[d] for d in sorted(schedule.weekdays)]
    joined = ", ".join(days[:-1]) + (" and " if len(days) > 1 else "") + days[-1] if days else ""
    return f"Every {joined or 'no day'} at {times}"
