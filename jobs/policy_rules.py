"""A backup policy as data: parsing the editor's form, every rule it must satisfy, the
canonical spec and its hash. Pure functions, no Django.

The spec (what the portal stores, hashes, and sends to the agent)::

    {"items": ["/home", ...], "exclude_globs": ["*.tmp", ...], "exclude_types": [".iso"],
     "frequency": "daily" | "weekly", "times": ["00:00", "18:00"], "weekdays": [5],
     "retention": {"daily": {"days": 7} | None,
                   "weekly": {"weekdays": [5], "weeks": 4} | None,
                   "monthly": {"mode": "day" | "week", "days": [1, 0], "week": "last",
                               "weekdays": [5], "months": 12} | None,
                   "yearly": {"months": [3], "mode": ..., "days": ..., "week": ...,
                              "weekdays": ..., "years": 10} | None},
     "initial_backup": "online" | "offline",
     "system_state": True,            # optional: System State collected before each backup
     "seed_staging": "/mnt/seed/web",  # optional, Offline only: the seed's staging folder
     "throttle": {...}}  # optional: agents.runtime.throttling's schedule

Weekdays are 0 (Monday) to 6 (Sunday); in ``days`` 0 means the last day of the month.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import time

from agents.runtime import throttling
from agents.runtime.protocol import POLICY_SEED_STAGING, POLICY_SYSTEM_STATE
from jobs.retention import LAST_DAY, WEEKS
from jobs.schedule import DAILY, WEEKDAY_NAMES, WEEKLY

MAX_TIMES = 3
MAX_DAYS, MAX_WEEKS, MAX_MONTHS, MAX_YEARS = 9999, 5163, 1188, 99
MAX_ITEMS = 100
MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# A policy setting (a dotted name of its spec, as ``policy_diff`` records a change in the
# activity log) in the editor's words, and the words for its coded values.
_RULE_WORDS = {"mode": "on", "days": "days of the month", "week": "week of the month",
               "weekdays": "day of the week"}  # fmt: skip
SETTING_LABELS = {
    "items": "Items to back up",
    "exclude_globs": "Exclusions",
    "exclude_types": "Excluded file types",
    "frequency": "Backup frequency",
    "times": "Backup times",
    "weekdays": "Backup days",
    "initial_backup": "Initial backup",
    POLICY_SYSTEM_STATE: "System State",
    POLICY_SEED_STAGING: "Seed staging folder",
    "retention.daily": "Daily retention",
    "retention.daily.days": "Daily points kept (days)",
    "retention.weekly": "Weekly retention",
    "retention.weekly.weekdays": "Weekly retention, day of the week",
    "retention.weekly.weeks": "Weekly points kept (weeks)",
    "retention.monthly": "Monthly retention",
    "retention.monthly.months": "Monthly points kept (months)",
    "retention.yearly": "Yearly retention",
    "retention.yearly.months": "Yearly retention, month",
    "retention.yearly.years": "Yearly points kept (years)",
    **{
        f"retention.{level}.{key}": f"{level.capitalize()} retention, {words}"
        for level in ("monthly", "yearly")
        for key, words in _RULE_WORDS.items()
    },
    f"{throttling.POLICY_KEY}.enabled": "Network throttling",
    f"{throttling.POLICY_KEY}.work_days": "Throttling work days",
    f"{throttling.POLICY_KEY}.work_start": "Throttling work hours start",
    f"{throttling.POLICY_KEY}.work_end": "Throttling work hours end",
    f"{throttling.POLICY_KEY}.work_kbps": "Throttled bandwidth in work hours (Kbps)",
    f"{throttling.POLICY_KEY}.off_kbps": "Throttled bandwidth off work hours (Kbps)",
}


def setting_value_labels() -> dict[str, dict[str, str]]:
    """The words for the coded values of the policy's settings, by dotted name."""
    days = {str(n): name for n, name in enumerate(WEEKDAY_NAMES)}
    hours = {str(h): f"{h:02d}:00" for h in range(25)}
    return {
        "frequency": {DAILY: "Daily", WEEKLY: "Weekly"},
        "weekdays": days,
        "initial_backup": {
            "online": "Automatically over the network",
            "offline": "Offline (seed from a disk)",
        },
        "retention.weekly.weekdays": days,
        "retention.yearly.months": {str(n): name for n, name in enumerate(MONTH_NAMES, 1)},
        f"{throttling.POLICY_KEY}.work_days": days,
        f"{throttling.POLICY_KEY}.work_start": hours,
        f"{throttling.POLICY_KEY}.work_end": hours,
        **{
            f"retention.{level}.{key}": words
            for level in ("monthly", "yearly")
            for key, words in (
                ("mode", {"day": "Days of the month", "week": "Week of the month"}),
                ("days", {str(LAST_DAY): "Last"}),
                ("week", {w: w.capitalize() for w in WEEKS}),
                ("weekdays", days),
            )
        },
    }


# ASCII and anchored at the very end: ``\d`` alone matches any script's digits and ``$``
# matches before a trailing newline.
TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")
TYPE_RE = re.compile(r"\.?[A-Za-z0-9_+-]{1,20}\Z")
WHOLE_NUMBER_RE = re.compile(r"-?[0-9]{1,9}\Z")
SEED_STAGING_RE = re.compile(r"/[^\x00-\x1f\x7f]{0,399}\Z")

Problems = dict[str, list[str]]


def default_spec() -> dict:
    """The editor's starting point: the reference's example policy."""
    return {
        "items": [],
        "exclude_globs": [],
        "exclude_types": [],
        "frequency": DAILY,
        "times": ["00:00", "18:00"],
        "weekdays": [5],
        "retention": {
            "daily": {"days": 7},
            "weekly": {"weekdays": [5], "weeks": 4},
            "monthly": {"mode": "week", "days": [], "week": "last", "weekdays": [5], "months": 12},
            "yearly": {
                "months": [3],
                "mode": "week",
                "days": [],
                "week": "last",
                "weekdays": [5],
                "years": 10,
            },
        },
        "initial_backup": "online",
    }


def spec_hash(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lines(value: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", value or "") if line.strip()]


def _getlist(data: Mapping, name: str) -> list[str]:
    if hasattr(data, "getlist"):
        return [v for v in data.getlist(name) if str(v).strip() != ""]
    value = data.get(name, [])
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if str(v).strip() != ""]


def whole_number(raw) -> int | None:
    """The form's whole number, or None. Only ASCII digits count: ``'²'.isdigit()`` is True
    yet ``int('²')`` raises, and ``int('١')``, ``int('1_0')`` succeed where the form never
    sends such text; nine digits are more than any field here takes."""
    text = str(raw).strip()
    return int(text) if WHOLE_NUMBER_RE.match(text) else None


def _int_in(problems: Problems, field: str, raw, low: int, high: int, unit: str) -> int | None:
    number = whole_number(raw) if raw is not None else None
    if number is None:
        problems.setdefault(field, []).append(
            f"Enter a whole number of {unit} from {low} to {high:,}."
        )
        return None
    if not low <= number <= high:
        problems.setdefault(field, []).append(
            f"Keep backups for {low} to {high:,} {unit}; {number:,} is out of range."
        )
        return None
    return number


def _ints(
    problems: Problems, field: str, raws: list[str], low: int, high: int, what: str
) -> list[int]:
    values = []
    for raw in raws:
        value = whole_number(raw)
        if value is None or not low <= value <= high:
            problems.setdefault(field, []).append(f"{raw[:20]!r} is not a valid {what}.")
        else:
            values.append(value)
    return sorted(set(values))


def _on(data: Mapping, name: str) -> bool:
    value = data.get(name)
    return str(value).lower() in ("on", "true", "1", "yes")


def parse_form(data: Mapping) -> tuple[dict, Problems]:
    """The editor's POST data to a spec, and every rule it breaks, per form field."""
    problems: Problems = {}
    items = _lines(data.get("items", ""))
    exclude_globs = _lines(data.get("exclude_globs", ""))
    exclude_types = [
        t.strip() for t in re.split(r"[,\s]+", data.get("exclude_types", "") or "") if t.strip()
    ]
    frequency = data.get("frequency", DAILY)
    times = [t.strip() for t in _getlist(data, "times")]
    weekdays = _ints(problems, "weekdays", _getlist(data, "weekdays"), 0, 6, "day of the week")

    retention: dict = {"daily": None, "weekly": None, "monthly": None, "yearly": None}
    if _on(data, "daily_enabled"):
        days = _int_in(problems, "daily_days", data.get("daily_days"), 1, MAX_DAYS, "days")
        retention["daily"] = {"days": days}
    if _on(data, "weekly_enabled"):
        weeks = _int_in(problems, "weekly_weeks", data.get("weekly_weeks"), 1, MAX_WEEKS, "weeks")
        retention["weekly"] = {
            "weekdays": _ints(
                problems, "weekly_weekdays", _getlist(data, "weekly_weekdays"), 0, 6, "day"
            ),
            "weeks": weeks,
        }
    for level, unit, high, count_field in (
        ("monthly", "months", MAX_MONTHS, "monthly_months"),
        ("yearly", "years", MAX_YEARS, "yearly_years"),
    ):
        if not _on(data, f"{level}_enabled"):
            continue
        rule = {
            "mode": data.get(f"{level}_mode", "week"),
            "days": _ints(
                problems,
                f"{level}_days",
                _getlist(data, f"{level}_days"),
                0,
                28,
                "day of the month",
            ),
            "week": data.get(f"{level}_week", "last"),
            "weekdays": _ints(
                problems, f"{level}_weekdays", _getlist(data, f"{level}_weekdays"), 0, 6, "day"
            ),
            unit: _int_in(problems, count_field, data.get(count_field), 1, high, unit),
        }
        if level == "yearly":
            rule["months"] = _ints(
                problems, "yearly_months", _getlist(data, "yearly_months"), 1, 12, "month"
            )
        retention[level] = rule
    spec = {
        "items": items,
        "exclude_globs": exclude_globs,
        "exclude_types": exclude_types,
        "frequency": frequency,
        "times": times,
        "weekdays": weekdays,
        "retention": retention,
        "initial_backup": data.get("initial_backup", "online"),
    }
    if _on(data, POLICY_SYSTEM_STATE):
        spec[POLICY_SYSTEM_STATE] = True
    staging = str(data.get(POLICY_SEED_STAGING) or "").strip()
    if staging:
        spec[POLICY_SEED_STAGING] = staging
    for field, messages in spec_problems(spec).items():
        for message in messages:
            if message not in problems.get(field, []):
                problems.setdefault(field, []).append(message)
    return normalize(spec), problems


def normalize(spec: dict) -> dict:
    """Canonical form: sorted, de-duplicated; a weekly schedule's weekly retention keeps the
    scheduled days (the reference ties them together)."""
    spec = json.loads(json.dumps(spec))
    spec["times"] = sorted(set(spec.get("times", [])))
    spec["weekdays"] = sorted(set(spec.get("weekdays", []))) if spec["frequency"] == WEEKLY else []
    spec["exclude_types"] = sorted(
        {("." + t.lstrip(".")).lower() for t in spec.get("exclude_types", [])}
    )
    weekly = spec["retention"].get("weekly")
    if spec["frequency"] == WEEKLY and weekly:
        weekly["weekdays"] = list(spec["weekdays"])
    for level in ("monthly", "yearly"):
        rule = spec["retention"].get(level)
        if rule and rule.get("mode") == "week":
            rule["days"] = []
        elif rule:
            rule["weekdays"] = []
            rule["week"] = "last"
    return spec


def spec_problems(spec: dict) -> Problems:
    """Every rule a spec breaks, keyed by the editor's field names."""
    problems: Problems = {}

    def add(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    items = spec.get("items", [])
    if not items:
        add("items", "Add at least one folder or file to back up.")
    if len(items) > MAX_ITEMS:
        add("items", f"Back up at most {MAX_ITEMS} items; group folders instead.")
    for item in items:
        if not (item.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", item)):
            add("items", f"{item!r} is not an absolute path (start with / or a drive letter).")
    if len(set(items)) != len(items):
        add("items", "Each item may be listed once.")
    for glob in spec.get("exclude_globs", []):
        if "\x00" in glob or len(glob) > 400:
            add("exclude_globs", f"{glob[:40]!r} is not a usable pattern.")
    for kind in spec.get("exclude_types", []):
        if not TYPE_RE.match(kind):
            add("exclude_types", f"{kind!r} is not a file type; write it like .iso or tmp.")

    frequency = spec.get("frequency")
    if frequency not in (DAILY, WEEKLY):
        add("frequency", "Choose daily or weekly backups.")
    times = spec.get("times", [])
    if not times:
        add("times", "Choose at least one time of day.")
    if len(set(times)) > MAX_TIMES:
        add("times", f"Back up at most {MAX_TIMES} times a day.")
    for value in times:
        if not TIME_RE.match(str(value)):
            add("times", f"{value!r} is not a time of day (HH:MM, 24-hour).")
    if len(set(times)) != len(times):
        add("times", "Each time may be chosen once.")
    weekdays = set(spec.get("weekdays", []))
    if frequency == WEEKLY and not weekdays:
        add("weekdays", "Choose at least one day of the week for weekly backups.")

    retention = spec.get("retention", {})
    daily, weekly = retention.get("daily"), retention.get("weekly")
    monthly, yearly = retention.get("monthly"), retention.get("yearly")
    if not any((daily, weekly, monthly, yearly)):
        add("retention", "Turn on at least one retention range.")
    if frequency == DAILY and not daily:
        add("daily_days", "A daily schedule needs a daily retention range.")
    if frequency == WEEKLY and daily:
        add(
            "daily_days",
            "A weekly schedule has no daily backups to keep; turn daily retention off.",
        )
    if frequency == WEEKLY and not weekly:
        add("weekly_weeks", "A weekly schedule needs a weekly retention range.")
    _count(add, daily, "days", "daily_days", MAX_DAYS)
    if weekly:
        _count(add, weekly, "weeks", "weekly_weeks", MAX_WEEKS)
        if frequency != WEEKLY and not weekly.get("weekdays"):
            add("weekly_weekdays", "Choose the day of the week whose backups are kept weekly.")
    for level, unit, high in (("monthly", "months", MAX_MONTHS), ("yearly", "years", MAX_YEARS)):
        rule = retention.get(level)
        if not rule:
            continue
        _count(add, rule, unit, f"{level}_{unit}", high)
        if rule.get("mode") not in ("day", "week"):
            add(f"{level}_mode", "Choose days of the month or a week of the month.")
        elif rule["mode"] == "day":
            if not rule.get("days"):
                add(f"{level}_days", "Choose at least one day of the month.")
            elif any(not (d == LAST_DAY or 1 <= d <= 28) for d in rule["days"]):
                add(f"{level}_days", "Days of the month run from 1 to 28, or Last.")
        else:
            if rule.get("week") not in WEEKS:
                add(f"{level}_week", "Choose First, Second, Third, Fourth or Last.")
            if not rule.get("weekdays"):
                add(f"{level}_weekdays", "Choose at least one day of the week.")
            elif frequency == WEEKLY and not set(rule["weekdays"]) <= weekdays:
                names = ", ".join(
                    WEEKDAY_NAMES[d] for d in sorted(set(rule["weekdays"]) - weekdays)
                )
                add(
                    f"{level}_weekdays",
                    f"No backup is scheduled on {names}; choose scheduled days only.",
                )
        if level == "yearly" and not rule.get("months"):
            add("yearly_months", "Choose at least one month.")
    if spec.get("initial_backup") not in ("online", "offline"):
        add("initial_backup", "Choose online or offline for the initial backup.")
    if POLICY_SYSTEM_STATE in spec and spec[POLICY_SYSTEM_STATE] is not True:
        add(POLICY_SYSTEM_STATE, "System State is either included or left out of the policy.")
    if POLICY_SEED_STAGING in spec:
        staging = spec[POLICY_SEED_STAGING]
        if not isinstance(staging, str) or not SEED_STAGING_RE.match(staging):
            add(
                POLICY_SEED_STAGING,
                "Type the seed staging folder as an absolute path on the machine, like "
                "/mnt/seed-disk/web-01 (at most 400 characters, no line breaks).",
            )
        elif staging.rstrip("/") == "" or ".." in staging.split("/"):
            add(POLICY_SEED_STAGING, "Choose a folder of its own for the seed, not / or a path "
                "with .. in it.")  # fmt: skip
        elif spec.get("initial_backup") != "offline":
            add(POLICY_SEED_STAGING, "A seed staging folder is used only by an Offline initial "
                "backup: choose Offline, or clear the folder.")  # fmt: skip
    if throttling.POLICY_KEY in spec:
        throttle = spec[throttling.POLICY_KEY]
        if not isinstance(throttle, dict):
            add("enabled", "Network throttling is not a schedule.")
        else:
            for field, messages in throttling.spec_problems(throttle).items():
                for message in messages:
                    add(field, message)
    return problems


def _count(add, rule: dict | None, unit: str, field: str, high: int) -> None:
    if not rule:
        return
    value = rule.get(unit)
    if value is None:
        return  # already reported by the parser
    if not isinstance(value, int) or not 1 <= value <= high:
        add(field, f"Keep backups for 1 to {high:,} {unit}.")


# With a vault's security features on, no retention range may be shorter (the reference's
# minimums): level -> (unit, minimum, the editor's field).
SECURITY_MINIMUMS = {
    "daily": ("days", 7, "daily_days"),
    "weekly": ("weeks", 4, "weekly_weeks"),
    "monthly": ("months", 3, "monthly_months"),
    "yearly": ("years", 1, "yearly_years"),
}


def security_minimum_problems(spec: dict) -> Problems:
    """The retention ranges shorter than the security features' minimums."""
    problems: Problems = {}
    retention = spec.get("retention", {})
    for level, (unit, minimum, field) in SECURITY_MINIMUMS.items():
        rule = retention.get(level)
        value = rule.get(unit) if rule else None
        if isinstance(value, int) and value < minimum:
            problems[field] = [
                f"With the vault's security features on, {level} backups are kept at least "
                f"{minimum} {unit}."
            ]
    return problems


def retention_lowered(before: dict, after: dict) -> list[str]:
    """How ``after`` keeps recovery points for less time than ``before``: a retention range
    turned off or shortened, in words ("daily 30 → 7 days"); empty when none is."""
    lowered = []
    old, new = before.get("retention", {}), after.get("retention", {})
    for level, (unit, _, _) in SECURITY_MINIMUMS.items():
        was, now = old.get(level), new.get(level)
        if not was:
            continue
        if not now:
            lowered.append(f"{level} retention turned off (was {was[unit]:,} {unit})")
        elif isinstance(now.get(unit), int) and now[unit] < was[unit]:
            lowered.append(f"{level} {was[unit]:,} → {now[unit]:,} {unit}")
    return lowered


def parse_times(spec: dict) -> list[time]:
    return [time(int(t[:2]), int(t[3:])) for t in spec.get("times", [])]


def describe_retention(spec: dict) -> list[str]:
    """Sentences for the confirmation and the policy summary."""
    retention = spec.get("retention", {})
    lines = []
    if retention.get("daily"):
        lines.append(f"Daily backups are kept for {retention['daily']['days']:,} days.")
    if retention.get("weekly"):
        w = retention["weekly"]
        days = ", ".join(WEEKDAY_NAMES[d] for d in w.get("weekdays", []))
        lines.append(f"Backups on {days or '—'} are kept for {w['weeks']:,} weeks.")
    for level, unit in (("monthly", "months"), ("yearly", "years")):
        rule = retention.get(level)
        if not rule:
            continue
        where = _describe_month_rule(rule)
        if level == "yearly":
            months = ", ".join(MONTH_NAMES[m - 1] for m in rule.get("months", []))
            where = f"{where} of {months}"
        lines.append(f"Backups on {where} are kept for {rule[unit]:,} {unit}.")
    return lines


def _describe_month_rule(rule: dict) -> str:
    if rule.get("mode") == "week":
        days = ", ".join(WEEKDAY_NAMES[d] for d in rule.get("weekdays", []))
        return f"the {rule.get('week', 'last')} {days}"
    days = ", ".join("the last day" if d == LAST_DAY else _ordinal(d) for d in rule.get("days", []))
    return days


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the {n}{suffix}"
