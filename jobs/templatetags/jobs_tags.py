"""Formatting for job pages: durations, rates, ETAs, progress percentages, tags, and the
words of a restore's details."""

from __future__ import annotations

import html
from datetime import datetime, timedelta

from django import template
from django.template.defaultfilters import filesizeformat
from django.utils.safestring import mark_safe

from jobs.recovery.services import CONFLICTS
from jobs.schedule import WEEKDAY_NAMES

register = template.Library()


@register.filter
def seconds_human(value) -> str:
    """3725 -> '1 h 2 min'; 42 -> '42 s'."""
    if value in (None, ""):
        return "—"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else float(value))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


@register.filter
def rate(value) -> str:
    if not value:
        return "—"
    return f"{filesizeformat(value)}/s"


@register.filter
def drill_mbps(evidence) -> str:
    """A drill's restore rate in MB/s (its bytes over its restore time)."""
    if not evidence or not evidence.get("restore_ms"):
        return "—"
    return f"{evidence['bytes'] / evidence['restore_ms'] / 1000:.1f} MB/s"


@register.filter
def bytes_or_dash(value) -> str:
    return "—" if value is None else filesizeformat(value)


@register.filter
def progress_percent(progress) -> int | None:
    """Percent done from bytes (or files while bytes are unknown); None = indeterminate."""
    if not progress:
        return None
    for done_key, total_key in (("bytes_done", "bytes_total"), ("files_done", "files_total")):
        done, total = progress.get(done_key), progress.get(total_key)
        if total:
            return max(0, min(100, int(100 * (done or 0) / total)))
    return None


@register.filter
def phase_label(phase) -> str:
    return {
        "scanning": "Scanning files",
        "backing_up": "Backing up",
        "finalizing": "Finalizing",
        "restoring": "Restoring",
        "verifying": "Verifying",
        "sampling": "Choosing the sample",
        "compacting": "Rewriting packs",
    }.get(phase or "", (phase or "Starting").replace("_", " ").capitalize())


@register.filter
def weekday_name(value) -> str:
    return WEEKDAY_NAMES[int(value)]


@register.filter
def get_item(mapping, key):
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def contains(container, value) -> bool:
    try:
        return value in container or str(value) in [str(v) for v in container]
    except TypeError:
        return False


@register.filter
def iso_datetime(value):
    """An ISO 8601 string kept in a job's details, as a datetime for ``|date``."""
    if not value or not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@register.filter
def conflict_label(value) -> str:
    """What a restore does with an item that already exists, as Recover Data words it."""
    return CONFLICTS.get(value or "", value or "—")


@register.filter
def is_restore(job) -> bool:
    """Restores and downloads (a download is a restore job with ``details.kind``)."""
    return getattr(job, "operation", "") == "restore"


@register.filter
def is_download(job) -> bool:
    return is_restore(job) and (getattr(job, "details", None) or {}).get("kind") == "download"


@register.simple_tag
def machine_options(machines, selected) -> str:
    """The ``<option>`` of each machine (``{"id", "name"}``), ``selected`` (an id's text)
    marked: a fleet has thousands, and a template loop (or Django's ``format_html`` per
    option) cost the jobs list more than its rows. Names are escaped as Django escapes
    (``html.escape``, quotes included); ids are UUIDs."""
    options = []
    for m in machines:
        value = str(m["id"])
        mark = " selected" if value == selected else ""
        options.append(f'<option value="{value}"{mark}>{html.escape(m["name"])}</option>')
    return mark_safe("".join(options))  # every value above is escaped


@register.filter
def broker_wait(job):
    """The job's wait for the message broker, or None (``jobs.selectors.broker_wait``)."""
    from jobs import selectors

    return selectors.broker_wait(job)
