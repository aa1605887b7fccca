"""Live updates and notifications: a job's fragments pushed to its page and its vault's
pages, a vault's alert summary, and the bell notification when a job ends. Every push
leaves after commit (``portal.realtime.publish``); the page shows the same on reload.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.cache import cache
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.formats import number_format
from django.utils.html import avoid_wrapping
from django.utils.translation import get_language, gettext
from redis.exceptions import RedisError

from jobs import selectors
from jobs.models import Job
from portal import realtime
from portal.models import Notification
from portal.services import notification_publish
from vaults.services import group_for_vault

log = logging.getLogger(__name__)


def job_group(job_id) -> str:
    return f"job.{job_id}"


def job_fragments(job: Job, *, only: set[str] | None = None) -> list[tuple[str, str]]:
    """The job's fragments, each with the group it goes to: its page's and its vault's
    (``only`` those groups, when given)."""
    context = {"job": job, "oob": True}
    templates = [
        (job_group(job.pk), "jobs/_job_live.html"),
        (group_for_vault(job.vault_id), "jobs/_job_row.html"),
    ]
    return [
        (group, render_to_string(template, context))
        for group, template in templates
        if only is None or group in only
    ]


def job_publish(job: Job, *, only: set[str] | None = None) -> None:
    """Push the job's fragments to its page and to its vault's pages (``only`` those
    groups, when given: the ones some socket hears), after commit."""
    for group, html in job_fragments(job, only=only):
        realtime.publish(group, html)
    if only is None:  # a state change, not a running job's new phase
        realtime.fleet_changed(job.vault.subscription_id)


# Kept long enough to outlive any gap between reports; a finished job ignores it.
LIVE_PROGRESS_TTL = 3600


def progress_changes_shape(before: dict, after: dict) -> bool:
    """Whether a report changes more than the numbers in place: the first report, a new
    phase, or a percentage appearing or going (the bar turns (in)determinate)."""
    from jobs.templatetags.jobs_tags import progress_percent  # imports jobs.services

    return (
        not before
        or before.get("phase") != after.get("phase")
        or (progress_percent(before) is None) != (progress_percent(after) is None)
    )


def progress_cache_write(job: Job) -> bool:
    """Keep ``job``'s latest report where pages read it (``selectors.live_progress``).
    False when the cache (Redis) cannot be reached: the caller writes the row instead, so
    the report is neither lost nor answered with an error."""
    try:
        cache.set(
            selectors.live_progress_key(job.pk),
            {
                "progress": job.progress,
                "bytes_transferred": job.bytes_transferred,
                "last_report_at": job.last_report_at,
            },
            LIVE_PROGRESS_TTL,
        )
    except RedisError as exc:
        log.warning("the cache is unreachable (%s): job %s's progress goes to its row", exc, job.pk)
        return False
    return True


# What a job's fragments show: the job with its machine, vault and creator.
_SHOWN_RELATIONS = ("machine", "vault", "created_by")
SHOWN_JOBS = Job.objects.select_related(*_SHOWN_RELATIONS)


def _shown_whole(job: Job) -> bool:
    """Whether ``job`` was loaded with what its fragments show (``SHOWN_JOBS``), so it is
    rendered as it is, not read again."""
    return all(Job._meta.get_field(name).is_cached(job) for name in _SHOWN_RELATIONS)


def job_progress_publish(job: Job, *, rerender: bool, heard: set[str] | None = None) -> None:
    """Push ``job``'s latest report, after commit. A report that changes only numbers
    travels as one small JSON message for both groups (``progress_fields``;
    static/js/jobs.js sets the fields); otherwise (``rerender``, the row just written) the
    fragments are rendered afresh (only for the groups in ``heard``, when the caller knows
    which some socket hears)."""
    if rerender:
        if heard is not None and not heard:
            return
        job_publish(job if _shown_whole(job) else SHOWN_JOBS.get(pk=job.pk), only=heard)
        return
    message = json.dumps({"job_progress": str(job.pk), "fields": progress_fields(job)})
    realtime.publish(job_group(job.pk), message)
    realtime.publish(group_for_vault(job.vault_id), message)


# A steady report's texts, formatted without Django's filters: ``filesizeformat`` and
# ``intcomma`` look up the active language's translations and number formats on every
# call, and were about 40% of a report's cost on the event loop. The separators and unit
# texts are taken from Django once per language and checked against it
# (``_number_style``); a language whose numbers these rules do not give falls back to
# Django's filters. The text is the same either way (tests/jobs/test_progress_format.py).
_SIZE_UNITS = (1 << 50, 1 << 40, 1 << 30, 1 << 20, 1 << 10)
_SIZE_NAMES = {
    1 << 50: "%s PB",
    1 << 40: "%s TB",
    1 << 30: "%s GB",
    1 << 20: "%s MB",
    1 << 10: "%s KB",
}
_FAST_SIZE_BELOW = 1 << 60  # past it Django formats in scientific notation


@dataclass(frozen=True)
class _NumberStyle:
    thousands: str
    decimal: str
    units: dict[int, str]  # unit -> "%s KB" in the language, spaces kept unbreakable


def _make_style() -> _NumberStyle | None:
    """The active language's separators and unit texts, if its numbers group by threes and
    its sizes show one decimal without grouping (then the fast formatters give Django's
    text); None otherwise."""
    one_and_half = number_format(1.5, 1)
    if len(one_and_half) < 3 or not one_and_half.startswith("1") or not one_and_half.endswith("5"):
        return None
    style = _NumberStyle(
        thousands=intcomma(1000)[1:-3],
        decimal=one_and_half[1:-1],
        units={unit: gettext(name) for unit, name in _SIZE_NAMES.items()},
    )
    probes = (0, 7, 999, 1000, 1234567, -1234567, 10**15 + 5)
    if any(_count_text(n, style) != intcomma(n) for n in probes):
        return None
    sizes = (1024, 1535, 10**6, 1023 * 1024 + 1000, 10**12 + 7, 1 << 50, 3 << 55)
    if any(_size_text(n, style) != filesizeformat(n) for n in sizes):
        return None
    return style


_styles: dict[str | None, _NumberStyle | None] = {}


def _number_style(language: str | None) -> _NumberStyle | None:
    """The style of ``language``, the active one (looking it up costs more than the
    formatting: callers look it up once)."""
    if language not in _styles:
        _styles[language] = _make_style()
    return _styles[language]


def _count_text(count: int, style: _NumberStyle) -> str:
    text = f"{count:,}"
    return text if style.thousands == "," else text.replace(",", style.thousands)


def _size_text(count: int, style: _NumberStyle) -> str:
    negative = count < 0
    count = -count if negative else count
    unit = next(u for u in _SIZE_UNITS if count >= u)
    number = f"{round(count / unit, 1):.1f}"
    if style.decimal != ".":
        number = number.replace(".", style.decimal)
    text = style.units[unit] % number
    return avoid_wrapping(f"-{text}" if negative else text)


def _count(value, style: _NumberStyle | None) -> str:
    """``intcomma(value)``."""
    if style is None or type(value) is not int:
        return intcomma(value)
    return _count_text(value, style)


_byte_texts: dict[tuple, str] = {}


def _size(value, style: _NumberStyle | None, language: str | None) -> str:
    """``filesizeformat(value)``."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        return filesizeformat(value)
    if style is None or abs(count) >= _FAST_SIZE_BELOW:
        return filesizeformat(count)
    if abs(count) < 1024:  # "1 byte", "7 bytes": a plural form per count, remembered
        key = (language, count)
        text = _byte_texts.get(key)
        if text is None:
            if len(_byte_texts) > 10_000:
                _byte_texts.clear()
            text = _byte_texts[key] = filesizeformat(count)
        return text
    return _size_text(count, style)


def size_texts(values) -> list[str]:
    """``filesizeformat`` of each of ``values`` (a long list's column), the active language
    looked up once for them all."""
    language = get_language()
    style = _number_style(language)
    return [_size(value, style, language) for value in values]


def progress_fields(job: Job) -> dict:
    """The text of each ``data-field`` of a running job's fragments (``_job_live.html``,
    ``_job_row.html``) that a progress report changes, formatted as the templates do."""
    from jobs.templatetags.jobs_tags import (  # imports jobs.services
        phase_label,
        progress_percent,
        rate,
        seconds_human,
    )

    p = job.progress or {}
    language = get_language()
    style = _number_style(language)
    pct = progress_percent(p)
    files = _count(p.get("files_done") or 0, style)
    if p.get("files_total") is not None:
        files += f" of {_count(p['files_total'], style)}"
    data = _size(p.get("bytes_done") or 0, style, language)
    if p.get("bytes_total") is not None:
        data += f" of {_size(p['bytes_total'], style, language)}"
    rate_bps = p.get("rate_bps")
    return {
        "phase": phase_label(p.get("phase")),
        "percent": f"{pct}%" if pct is not None else "",
        "width": pct,
        "files": files,
        "bytes": data,
        "rate": f"{_size(rate_bps, style, language)}/s" if rate_bps else rate(None),
        "eta": seconds_human(p.get("eta_s")),
        "current": p.get("current") or "—",
        "duration": seconds_human(job.duration),
        "transferred": _size(job.bytes_transferred, style, language),
    }


def alerts_publish(*, vault, counts: dict | None = None) -> None:
    if counts is None:
        counts = selectors.alert_counts(vault)
    html = render_to_string(
        "jobs/_alert_summary.html", {"vault": vault, "alert_counts": counts, "oob": True}
    )
    realtime.publish(group_for_vault(vault.pk), html)
    realtime.fleet_changed(vault.subscription_id)


def job_notify_finished(*, job: Job) -> None:
    if job.created_by is None:
        return
    level = {
        Job.Status.COMPLETED: Notification.Level.SUCCESS,
        Job.Status.WARNING: Notification.Level.WARNING,
        Job.Status.FAILED: Notification.Level.ERROR,
    }.get(job.status, Notification.Level.INFO)
    what = f"{job.get_operation_display()} of {job.machine or job.vault}"
    if job.operation == Job.Operation.RESTORE:
        # The job runs on the target machine; the data may be another machine's.
        details = job.details or {}
        source = details.get("source_name") or str(job.machine)
        if details.get("kind") == "download":
            what = f"Download of files of {source}"
        elif source != str(job.machine):
            what = f"Restore of {source} onto {job.machine}"
        else:
            what = f"Restore on {job.machine}"
    notification_publish(
        user=job.created_by,
        title=f"{what}: {job.get_status_display()}",
        body=job.error[:300] if job.error else "",
        level=level,
        link_url=reverse("jobs:detail", args=[job.pk]),
        link_label="View job",
        key=f"job:{job.pk}",
    )
