"""Network throttling on a schedule (the reference's "Enable network throttling"): one
bandwidth during work hours on work days, another outside them, in the machine's local time.

The schedule travels inside the backup policy (its ``throttle`` key, signed and versioned
with it); the portal validates it with ``problems`` and the agent applies it with
``ScheduledStore``, which looks at the clock before every transfer, so a running backup or
restore changes speed at the hour boundary without a restart. The spec::

    {"enabled": true, "work_days": [0, 1, 2, 3, 4], "work_start": 9, "work_end": 18,
     "work_kbps": 4096, "off_kbps": 65536}

Days are 0 (Monday) to 6 (Sunday); hours are whole hours, ``work_start`` 0-23 and
``work_end`` 1-24 (24: midnight at the end of the day). Rates are kilobits per second in
network units (1 Kbps = 1,000 bits per second, 1 Mbps = 1,000 Kbps).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from agents.runtime.blobstore.base import BlobStore
from agents.runtime.blobstore.throttle import ThrottledStore

MIN_KBPS = 512
MAX_KBPS = 1023 * 1000  # 1,023 Mbps
KBPS, MBPS = "Kbps", "Mbps"
UNITS = {KBPS: 1, MBPS: 1000}
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
RATE_RE = re.compile(r"[0-9]{1,7}(\.[0-9]{1,3})?\Z")  # ASCII digits; \Z: no trailing newline
POLICY_KEY = "throttle"  # the key of the policy spec that carries the schedule

Problems = dict[str, list[str]]


def default_spec() -> dict:
    """The editor's starting point (the reference's example: Monday to Friday, 9 to 6)."""
    return {
        "enabled": False,
        "work_days": [0, 1, 2, 3, 4],
        "work_start": 9,
        "work_end": 18,
        "work_kbps": 4000,
        "off_kbps": 64000,
    }


def bytes_per_second(kbps: int) -> int:
    return kbps * 1000 // 8


def format_rate(kbps: int) -> str:
    """``512 Kbps``, ``1.5 Mbps``, ``1,023 Mbps``: the largest unit that reads cleanly."""
    if kbps >= 1000 and kbps % 10 == 0:
        text = f"{Decimal(kbps) / 1000:,f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return f"{text} {MBPS}"
    return f"{kbps:,} {KBPS}"


def split_rate(kbps: int) -> tuple[str, str]:
    """The editor's (number, unit) for a rate."""
    number, unit = format_rate(kbps).split(" ")
    return number.replace(",", ""), unit


def format_hour(hour: int) -> str:
    return f"{hour:02d}:00"


def parse_rate(number: str, unit: str) -> int | None:
    """Kbps for an entered number and unit, or None when it is not a number."""
    text = (number or "").strip().replace(",", "")
    # Plain decimals only: Decimal alone would take "1e999999999" and build a huge integer.
    if unit not in UNITS or not RATE_RE.match(text):
        return None
    return int((Decimal(text) * UNITS[unit]).to_integral_value())


def number_in(raw, low: int, high: int) -> int | None:
    """A form's whole number from ``low`` to ``high`` (ASCII digits only), or None."""
    text = str(raw or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 2:
        return None
    value = int(text)
    return value if low <= value <= high else None


def parse_form(data: Mapping) -> tuple[dict, Problems]:
    """The editor's fields as a spec, and every problem with them keyed by field name."""
    getlist = getattr(data, "getlist", lambda name: data.get(name, []))
    problems: Problems = {}
    days: list[int] = []
    for raw in getlist("work_days"):
        day = number_in(raw, 0, 6)
        if day is None:
            problems.setdefault("work_days", []).append(f"{raw!r} is not a day of the week.")
        else:
            days.append(day)
    spec = {
        "enabled": str(data.get("enabled", "")).lower() in ("on", "true", "1"),
        "work_days": sorted(set(days)),
        "work_start": number_in(data.get("work_start"), 0, 23),
        "work_end": number_in(data.get("work_end"), 1, 24),
        "work_kbps": parse_rate(data.get("work_rate", ""), data.get("work_unit", "")),
        "off_kbps": parse_rate(data.get("off_rate", ""), data.get("off_unit", "")),
    }
    for field, message in spec_problems(spec).items():
        problems.setdefault(field, []).extend(message)
    return spec, problems


def spec_problems(spec: Mapping) -> Problems:
    """Every rule a schedule breaks, keyed by the editor's field names."""
    problems: Problems = {}
    if not isinstance(spec.get("enabled"), bool):
        problems["enabled"] = ["Throttling is either on or off."]
    days = spec.get("work_days")
    if not isinstance(days, list) or any(
        not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6 for d in days
    ):
        problems["work_days"] = ["Work days are days of the week."]
    elif spec.get("enabled") and not days:
        problems["work_days"] = ["Choose at least one work day."]
    start, end = spec.get("work_start"), spec.get("work_end")
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= 23:
        problems["work_start"] = ["Choose the hour work starts (00:00 to 23:00)."]
    if not isinstance(end, int) or isinstance(end, bool) or not 1 <= end <= 24:
        problems["work_end"] = ["Choose the hour work ends (01:00 to 24:00)."]
    elif isinstance(start, int) and "work_start" not in problems and end <= start:
        problems["work_end"] = ["Work hours must end after they start."]
    for key, field in (("work_kbps", "work_rate"), ("off_kbps", "off_rate")):
        rate = spec.get(key)
        if not isinstance(rate, int) or isinstance(rate, bool):
            problems[field] = ["Enter a bandwidth, like 512 Kbps or 10 Mbps."]
        elif not MIN_KBPS <= rate <= MAX_KBPS:
            problems[field] = [
                f"The bandwidth must be from {format_rate(MIN_KBPS)} to {format_rate(MAX_KBPS)}."
            ]
    return problems


def is_work_time(spec: Mapping, when: datetime) -> bool:
    return (
        when.weekday() in spec["work_days"] and spec["work_start"] <= when.hour < spec["work_end"]
    )


def kbps_at(spec: Mapping | None, when: datetime) -> int | None:
    """The limit at local time ``when``; None when throttling is off."""
    if not spec or not spec.get("enabled"):
        return None
    return spec["work_kbps"] if is_work_time(spec, when) else spec["off_kbps"]


def week_grid(spec: Mapping) -> list[tuple[str, list[bool]]]:
    """The preview: for each day, 24 hours, True where the work-hours rate applies."""
    return [
        (name, [day in spec["work_days"] and spec["work_start"] <= h < spec["work_end"]
                for h in range(24)])
        for day, name in enumerate(DAY_NAMES)
    ]  # fmt: skip


def describe(spec: Mapping | None) -> str:
    """One line for ``haven-agent status`` and the portal."""
    if not spec or not spec.get("enabled"):
        return "off"
    days = ", ".join(DAY_NAMES[d] for d in spec["work_days"])
    return (
        f"{format_rate(spec['work_kbps'])} on {days} "
        f"{format_hour(spec['work_start'])}-{format_hour(spec['work_end'])}, "
        f"{format_rate(spec['off_kbps'])} at other times (machine time)"
    )


def slowest_bytes_per_second(spec: Mapping | None) -> int:
    """The lowest rate the schedule ever sets (0: off), for sizing packs."""
    if not spec or not spec.get("enabled"):
        return 0
    return bytes_per_second(min(spec["work_kbps"], spec["off_kbps"]))


def applied_schedule(directory: Path, policy_file: str) -> dict | None:
    """The enabled schedule of the policy the agent applied (in ``directory``), or None."""
    try:
        data = json.loads((directory / policy_file).read_text())
    except (OSError, ValueError):
        return None
    spec = data.get("spec") if isinstance(data, dict) else None
    schedule = spec.get(POLICY_KEY) if isinstance(spec, dict) else None
    if not isinstance(schedule, dict) or spec_problems(schedule) or not schedule["enabled"]:
        return None
    return schedule


class ScheduledStore(ThrottledStore):
    """A ``ThrottledStore`` whose limit (both ways) follows a schedule: before each transfer
    it reads the local clock ``now`` and, when the hour crossed into the other rate, changes
    the buckets' rate in place. ``ceiling`` (bytes per second, 0: none) is a local limit
    (``haven-agent configure --bandwidth-limit``) the schedule never exceeds."""

    def __init__(
        self,
        inner: BlobStore,
        schedule: Mapping,
        *,
        ceiling: int = 0,
        now: Callable[[], datetime] = datetime.now,
        burst_bytes: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.schedule = dict(schedule)
        self.ceiling = ceiling
        self.now = now
        self._current = self.current_rate()
        super().__init__(
            inner,
            upload_bytes_per_second=self._current,
            download_bytes_per_second=self._current,
            burst_bytes=burst_bytes,
            clock=clock,
            sleep=sleep,
        )

    def current_rate(self) -> int:
        """Bytes per second at this moment."""
        kbps = kbps_at(self.schedule, self.now())
        rate = bytes_per_second(kbps) if kbps else 0
        if self.ceiling and (not rate or self.ceiling < rate):
            rate = self.ceiling
        return rate

    def _follow(self) -> None:
        rate = self.current_rate()
        if rate != self._current:
            self._current = rate
            self.set_limits(upload_bytes_per_second=rate, download_bytes_per_second=rate)

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._follow()
        super().put(name, data)

    def get(self, name: str) -> bytes:
        self._follow()
        return super().get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self._follow()
        return super().get_range(name, offset, length)
