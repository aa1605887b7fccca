"""Which recovery points a policy keeps, and until when. Pure functions, no Django.

A recovery point gets *tags* when it is created, from the wall-clock date (in the machine's
zone) of the run it stands for:

- ``daily``   every scheduled point, kept ``days``;
- ``weekly``  a point on one of the weekly days, kept ``weeks``;
- ``monthly`` a point on the monthly day ("15th", "Last day") or week day ("last Saturday"),
  kept ``months`` (calendar months);
- ``yearly``  a monthly-style match in one of the yearly months, kept ``years``.

A point expires when its longest tag does. Ad hoc points follow the reference's table: with a
daily schedule they get the daily retention, with a weekly schedule one day; the first ad hoc
backup after a failed scheduled backup that carried long-term tags (weekly, monthly, yearly)
inherits those tags; "Retain backup till" replaces the default ad hoc retention. The latest
point is never removed, whatever its expiry (the reference deletes it; we don't).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from jobs.schedule import WEEKLY, Schedule, occurrences

DAILY_TAG, WEEKLY_TAG, MONTHLY_TAG, YEARLY_TAG, ADHOC_TAG, RETAIN_TILL_TAG = (
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "ad hoc",
    "retain till",
)
LONG_TERM = (WEEKLY_TAG, MONTHLY_TAG, YEARLY_TAG)
WEEKS = ("first", "second", "third", "fourth", "last")
LAST_DAY = 0  # in a list of days of the month: "Last day"
ADHOC_WEEKLY_SCHEDULE_RETENTION = timedelta(days=1)


@dataclass(frozen=True)
class Tagging:
    tags: tuple[str, ...]
    expires_at: datetime
    # Expiry per tag, for the recovery points list ("weekly until 3 Aug").
    until: dict[str, datetime] = field(default_factory=dict, compare=False)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's length (31 Jan + 1 = 28/29 Feb)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def matches_month_rule(rule: dict, day: date) -> bool:
    """Does ``day`` match a monthly (or yearly) rule's day-of-month or week-of-month part?"""
    if rule.get("mode", "day") == "week":
        if day.weekday() not in set(rule.get("weekdays", [])):
            return False
        week = rule.get("week", "last")
        if week == "last":
            return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        return (day.day - 1) // 7 == WEEKS.index(week)
    days = set(rule.get("days", []))
    last = calendar.monthrange(day.year, day.month)[1]
    return day.day in days or (LAST_DAY in days and day.day == last)


def scheduled_tags(retention: dict, local: datetime) -> dict[str, datetime]:
    """Tag -> expiry (aware, same zone as ``local``) for a scheduled point at ``local``."""
    until: dict[str, datetime] = {}
    day = local.date()
    daily = retention.get("daily")
    if daily:
        until[DAILY_TAG] = local + timedelta(days=int(daily["days"]))
    weekly = retention.get("weekly")
    if weekly and day.weekday() in set(weekly.get("weekdays", [])):
        until[WEEKLY_TAG] = local + timedelta(weeks=int(weekly["weeks"]))
    monthly = retention.get("monthly")
    if monthly and matches_month_rule(monthly, day):
        until[MONTHLY_TAG] = add_months(local, int(monthly["months"]))
    yearly = retention.get("yearly")
    if yearly and day.month in set(yearly.get("months", [])) and matches_month_rule(yearly, day):
        until[YEARLY_TAG] = add_months(local, 12 * int(yearly["years"]))
    return until


def long_term_tags(retention: dict, local: datetime) -> dict[str, datetime]:
    return {t: u for t, u in scheduled_tags(retention, local).items() if t in LONG_TERM}


def end_of_day(day: date, tz: tzinfo) -> datetime:
    """The first instant after ``day`` ends in ``tz`` ("retain till 3 May" keeps all of 3 May)."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)


def tag_point(
    spec: dict,
    tz: tzinfo,
    *,
    adhoc: bool,
    tagged_for: datetime,
    inherited_from: datetime | None = None,
    retain_until: date | None = None,
) -> Tagging:
    """Tags and expiry of one recovery point.

    ``tagged_for`` is the scheduled time a scheduled point stands for (a Saturday 23:30 run
    that finishes on Sunday is Saturday's), or the ad hoc point's creation time.
    ``inherited_from`` is the failed scheduled run whose long-term tags an ad hoc point takes.
    """
    retention = spec.get("retention", {})
    local = tagged_for.astimezone(tz)
    if not adhoc:
        until = scheduled_tags(retention, local)
    else:
        until = {}
        if retain_until is not None:
            until[RETAIN_TILL_TAG] = end_of_day(retain_until, tz)
        elif spec.get("frequency") == WEEKLY or not retention.get("daily"):
            until[ADHOC_TAG] = local + ADHOC_WEEKLY_SCHEDULE_RETENTION
        else:
            until[DAILY_TAG] = local + timedelta(days=int(retention["daily"]["days"]))
        if inherited_from is not None:
            until.update(long_term_tags(retention, inherited_from.astimezone(tz)))
    until = {tag: moment.astimezone(UTC) for tag, moment in until.items()}
    expires = max(until.values()) if until else tagged_for.astimezone(UTC)
    order = (DAILY_TAG, ADHOC_TAG, RETAIN_TILL_TAG, *LONG_TERM)
    return Tagging(tuple(t for t in order if t in until), expires, until)


@dataclass(frozen=True)
class Point:
    id: object
    created_at: datetime
    expires_at: datetime | None


def expired(points: Iterable[Point], now: datetime) -> set:
    """Ids of the points to remove at ``now``: past expiry, never the latest one."""
    points = list(points)
    if not points:
        return set()
    latest = max(points, key=lambda p: (p.created_at, str(p.id)))
    return {
        p.id for p in points if p is not latest and p.expires_at is not None and p.expires_at <= now
    }


@dataclass(frozen=True)
class PreviewPoint:
    at: datetime  # UTC
    tags: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class Preview:
    start: datetime
    end: datetime
    kept: Sequence[PreviewPoint]  # what is still kept a year from now, newest first
    created: int  # scheduled points created over the year
    counts: dict[str, int]  # kept points per tag
    peak: int  # the most points kept at once during the year


def preview(spec: dict, tz: tzinfo, start: datetime, *, days: int = 365) -> Preview:
    """Simulate a year of scheduled backups that all succeed: what does the policy keep?"""
    end = start + timedelta(days=days)
    runs = occurrences(Schedule.from_spec(spec), tz, start, end)
    points = []
    for at in runs:
        tagging = tag_point(spec, tz, adhoc=False, tagged_for=at)
        # A year from now, a point is kept for the tags that have not run out yet.
        live = tuple(tag for tag in tagging.tags if tagging.until[tag] > end)
        points.append(PreviewPoint(at, live or tagging.tags, tagging.expires_at))
    kept = [p for p in points if p.expires_at > end]
    if points and points[-1] not in kept:
        kept.append(points[-1])
    counts: dict[str, int] = {}
    for p in kept:
        for tag in p.tags:
            counts[tag] = counts.get(tag, 0) + 1
    # Peak: sweep creation (+1) and expiry (-1) events; the latest point never expires.
    events = sorted(
        [(p.at, 1) for p in points]
        + [(p.expires_at, -1) for p in points[:-1] if p.expires_at <= end]
    )
    peak = live = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return Preview(
        start, end, sorted(kept, key=lambda p: p.at, reverse=True), len(points), counts, peak
    )
