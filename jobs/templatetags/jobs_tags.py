"""Formatting for job pages: durations, rates, ETAs, progress percentages, tags, and the
words of a restore's details."""

from __future__ import annotations

import html
from datetime import datetime, timedelta

from django import template
from django.template.defaultfilters import filesizeformat, urlencode
from django.template.defaulttags import CsrfTokenNode
from django.utils.safestring import mark_safe
from django.utils.timezone import template_localtime

from jobs.models import Job, RecoveryPoint
from jobs.recovery.services import CONFLICTS
from jobs.schedule import WEEKDAY_NAMES
from portal.templatetags.haven import ID_PLACEHOLDER, id_url, id_url_pattern, row_time

register = template.Library()


@register.filter
def seconds_human(value) -> str:
    """3725 -> '1 h 2 min'; 42 -> '42 s'; 0.4 -> 'under 1 s' (a job that ran did take time)."""
    if value in (None, ""):
        return "—"
    exact = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if 0 < exact < 1:
        return "under 1 s"
    seconds = int(exact)
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


# The policy editor's times: every half hour, as Azure's backup schedule offers them.
TIME_SLOTS = [f"{minutes // 60:02d}:{minutes % 60:02d}" for minutes in range(0, 24 * 60, 30)]


@register.simple_tag
def time_options(selected: str, *, empty: str = "Not used") -> str:
    """The ``<option>`` of each half hour, 24-hour ("00:00" … "23:30"), ``selected`` marked
    (a time off the half hours, set through the API, is offered in its place), and a first
    ``empty`` option. A select, not ``<input type="time">``: the browser shows that in its
    own locale's clock (2:00 AM in en-US) while the portal says 02:00 everywhere else."""
    slots = sorted({*TIME_SLOTS, selected} - {""})
    options = [f'<option value=""{"" if selected else " selected"}>{html.escape(empty)}</option>']
    for slot in slots:
        mark = " selected" if slot == selected else ""
        options.append(f'<option value="{html.escape(slot)}"{mark}>{html.escape(slot)}</option>')
    return mark_safe("".join(options))  # every value above is escaped


@register.filter
def broker_wait(job):
    """The job's wait for the message broker, or None (``jobs.selectors.broker_wait``)."""
    from jobs import selectors

    return selectors.broker_wait(job)


@register.simple_tag(takes_context=True)
def protection_actions(context, machine, protection, *, small=False, next="") -> str:
    """The actions a backup item's state allows (Back up now, Stop backup or Delete backup
    data, Resume backup, Undelete), with ``can_operate``/``can_contribute`` from the page;
    ``next`` returns there after. Built here rather than by an include per row: Backup items
    lists every machine of a vault, and the include cost a sixth of the page's render."""
    state = protection.state
    can_operate = context.get("can_operate")
    can_contribute = context.get("can_contribute")
    size = " small" if small else ""
    pk = machine.pk
    parts = []
    if can_operate and state in ("protected", "none"):
        parts.append(
            f'<a class="button{size}" href="{id_url("jobs:backup_now", pk)}" '
            'data-action="backup-now">Back up now</a>'
        )
    if (state == "protected" and can_operate) or (
        state in ("stopped", "unregistered") and can_contribute
    ):
        query = f"?next={urlencode(next)}" if next else ""
        label = "Stop backup" if state == "protected" else "Delete backup data"
        parts.append(
            f'<a class="button{size}" href="{id_url("jobs:protection_stop", pk)}{query}" '
            f'data-action="stop-backup">{label}</a>'
        )
    forms = []
    if state == "stopped" and can_operate and not machine.unregistered_at:
        forms.append(("jobs:protection_resume", "resume-backup", "Resume backup"))
    if state == "soft_deleted" and can_operate and protection.days_left:
        forms.append(("jobs:protection_undelete", "undelete", "Undelete"))
    for url_name, action, label in forms:
        hidden = f'<input type="hidden" name="next" value="{html.escape(next)}">' if next else ""
        parts.append(
            f'<form method="post" action="{id_url(url_name, pk)}" class="inline-form">'
            f"{CsrfTokenNode().render(context)}{hidden}"
            f'<button class="button{size}" type="submit" data-action="{action}">{label}'
            "</button></form>"
        )
    # Every value above is a fixed word, an escaped text, a URL of ids or Django's token.
    return mark_safe("\n".join(parts))


@register.simple_tag(takes_context=True)
def backup_item_rows(context, items) -> str:
    """The ``<tr>`` of each backup item (``jobs.views.backup_items`` prepares them): a vault
    may hold hundreds of machines, and the rows written as a template loop were most of the
    page's cost (Django's template engine costs microseconds per node, and a row had over
    forty). The same HTML as that loop; texts escaped as Django escapes them."""
    from jobs.services.live import size_texts  # imports jobs.services

    next_path = context["request"].path
    sizes = size_texts(item.stored or 0 for item in items)
    urls = {
        name: id_url_pattern(name)
        for name in ("agents:detail", "jobs:policy", "jobs:detail", "jobs:recovery_points")
    }

    def url(name, pk) -> str:
        return urls[name].replace(ID_PLACEHOLDER, str(pk))

    rows = []
    for item, stored in zip(items, sizes, strict=True):
        pk = item.pk
        protection = item.protection
        note = ""
        if protection.days_left is not None:
            days = protection.days_left
            note = (
                f'<div class="protection-note"><span class="days-left">{days} '
                f"day{'' if days == 1 else 's'} left</span> before the data is removed</div>"
            )
        policy = f"Version {item.policy.version}" if item.policy else "Set policy"
        if item.last_job_id:
            last_job = (
                f'<a href="{url("jobs:detail", item.last_job_id)}"><span class="status '
                f'{item.last_job_class}">{item.last_job_label}</span></a>'
            )
        else:
            last_job = "—"
        latest = row_time(template_localtime(item.latest_point_at)) or "—"
        actions = protection_actions(context, item, protection, small=True, next=next_path)
        rows.append(
            f'<tr data-machine="{pk}">\n'
            f'    <td><a href="{url("agents:detail", pk)}">{html.escape(item.name)}</a></td>\n'
            f'    <td data-field="protection"><span class="status {protection.status_class}" '
            f'title="{html.escape(protection.sentence)}">{protection.label}</span>{note}</td>\n'
            f'    <td><a href="{url("jobs:policy", pk)}">{policy}</a></td>\n'
            f"    <td>{last_job}</td>\n"
            f"    <td>{latest}</td>\n"
            f'    <td><a href="{url("jobs:recovery_points", pk)}">{item.points}</a></td>\n'
            f"    <td>{stored}</td>\n"
            f'    <td class="actions-col">{actions}</td>\n'
            "  </tr>"
        )
    # Names and sentences are escaped above; the rest are fixed words, numbers and ids.
    return mark_safe("\n  ".join(rows))


def _labels() -> tuple[dict, dict]:
    """The operations' and statuses' labels in the active language (each lazy label looks
    the language up again: a list takes them once)."""
    return (
        {value: str(label) for value, label in Job.Operation.choices},
        {value: str(label) for value, label in Job.Status.choices},
    )


def _job_row(job, *, oob: bool, detail_url: str, size: str, labels: tuple[dict, dict]) -> str:
    """``_job_row.html``'s ``<tr>`` for ``job`` (``size``: its bytes transferred as text)."""
    operations, statuses = labels
    machine = job.machine if job.machine_id else None
    item = html.escape((machine.name if machine else "") or job.vault.name)
    operation = "Download" if is_download(job) else operations.get(job.operation, job.operation)
    if job.trigger == "scheduled":
        operation += ' <span class="muted">(scheduled)</span>'
    elif job.started_on_machine:
        operation += ' <span class="muted">(started on the machine)</span>'
    status = (
        f'<span class="status {job.status_class}">{statuses.get(job.status, job.status)}</span>'
    )
    if job.status == "running":
        pct = progress_percent(job.progress)
        shown = f"{pct}%" if pct is not None else ""
        status += f' <span class="job-row-percent" data-field="percent">{shown}</span>'
    wait = broker_wait(job)
    if wait:
        since = f"{template_localtime(wait.since):%H:%M}"
        attempts = f"{wait.attempts} attempt{'' if wait.attempts == 1 else 's'}"
        status += (
            ' <span class="muted" data-field="broker-wait" title="Waiting for the message broker '
            f'(since {since}; {attempts}: {html.escape(wait.last_error)})">waiting for the '
            f"message broker since {since}</span>"
        )
    created = template_localtime(job.created_at)
    swap = ' hx-swap-oob="true"' if oob else ""
    return (
        f'<tr id="job-row-{job.pk}"{swap}>\n'
        f'  <td><a href="{detail_url}">{item}</a></td>\n'
        f"  <td>{operation}</td>\n"
        f"  <td>{status}</td>\n"
        f"  <td>{html.escape(job.vault.name)}</td>\n"
        f'  <td><time datetime="{created.isoformat()}">{row_time(created)}</time></td>\n'
        f'  <td data-field="duration">{seconds_human(job.duration)}</td>\n'
        f'  <td data-field="transferred">{size}</td>\n'
        "</tr>"
    )


@register.simple_tag
def job_row(job, oob=False) -> str:
    """One job's row of the jobs list (``_job_row.html``, the fragment pushed to a vault's
    watchers). Built in Python with ``job_rows``: the list's template loop cost more than
    the rest of the page."""
    from jobs.services.live import size_texts  # imports jobs.services

    url = id_url("jobs:detail", job.pk)
    # Names and the broker's error are escaped; the rest are fixed words, numbers, ids.
    return mark_safe(
        _job_row(
            job,
            oob=oob,
            detail_url=url,
            size=size_texts([job.bytes_transferred])[0],
            labels=_labels(),
        )
    )


@register.simple_tag
def job_rows(jobs) -> str:
    """``job_row`` of each of ``jobs``, each followed by a newline as the include gave."""
    from jobs.services.live import size_texts  # imports jobs.services

    pattern = id_url_pattern("jobs:detail")
    sizes = size_texts(job.bytes_transferred for job in jobs)
    labels = _labels()
    rows = [
        _job_row(
            job,
            oob=False,
            detail_url=pattern.replace(ID_PLACEHOLDER, str(job.pk)),
            size=size,
            labels=labels,
        )
        for job, size in zip(jobs, sizes, strict=True)
    ]
    return mark_safe("".join(f"{row}\n" for row in rows))  # escaped in _job_row


@register.simple_tag
def recovery_times(
    days, *, browse_url: str, secondary: bool, shown: bool = False, checked: str = ""
) -> str:
    """Recover Data's times: a ``fieldset.times`` for each of ``days`` (``{"date",
    "points"}``, the wizard shows one day at a time and loads another when it is chosen), a
    radio for each point (``secondary``: the wizard reads the secondary copy, where a point
    not yet copied cannot be chosen); ``shown``: not hidden; ``checked``: the snapshot id of
    the point chosen (a refused restore's). Built here rather than by a
    template loop (a ``{% url %}`` and three ``date`` filters per point cost the most when
    the wizard showed a year of points). Each ``time`` is shown as given: in the source
    machine's time zone, the zone its calendar's days are in."""
    from django.template.loader import get_template
    from django.utils.dates import MONTHS_3, WEEKDAYS_ABBR

    from jobs.services.live import size_texts  # imports jobs.services

    weekdays = [str(WEEKDAYS_ABBR[d]) for d in range(7)]
    month_names = {m: str(MONTHS_3[m]).title() for m in range(1, 13)}
    kinds = {value: str(label) for value, label in RecoveryPoint.Kind.choices}
    badge = None
    days = [day for day in days if day]
    sizes = iter(size_texts(item["point"].logical_bytes for day in days for item in day["points"]))
    out = []
    for day in days:
        d = day["date"]
        out.append(
            f'<fieldset class="times" data-day="{d:%Y-%m-%d}"{"" if shown else " hidden"}>\n'
            f"  <legend>Times on {weekdays[d.weekday()]} {d:%d} {month_names[d.month]} "
            f"{d:%Y}</legend>\n"
        )
        if not day["points"]:
            out.append('  <p class="muted">No recovery points on this day.</p>\n')
        for item in day["points"]:
            point = item["point"]
            size = next(sizes)
            when = item["time"]
            hhmm = f"{when:%H:%M}"
            snapshot = html.escape(point.snapshot_id)
            if secondary and not getattr(point, "on_secondary", False):
                out.append(
                    f'  <label class="recovery-choice not-replicated" data-point="{snapshot}">'
                    f'<input type="radio" name="rp" value="{snapshot}" disabled>\n'
                    f'    {hhmm} <span class="muted">Not yet copied to the secondary region: '
                    "restore it from the primary region, or wait for replication</span>"
                    "</label>\n"
                )
                continue
            label = (
                f"{weekdays[when.weekday()]} {when:%d} {month_names[when.month]} {when:%Y} {hhmm}"
            )
            damaged = ""
            badge_html = ""
            if point.is_damaged:
                files = ", ".join(str(f) for f in (point.verify_damage or {}).get("files") or [])
                damaged = (
                    f' data-damaged="'
                    f'{html.escape(files or "files whose data a verify found damaged")}"'
                )
                badge = badge or get_template("jobs/_damaged_badge.html")
                badge_html = " " + badge.render({"point": point}).strip()
            on = " checked" if checked and point.snapshot_id == checked else ""
            out.append(
                f'  <label class="recovery-choice"><input type="radio" name="rp" '
                f'value="{snapshot}"{on} data-label="{label}"{damaged}\n'
                f'    hx-post="{browse_url}" hx-vals=\'{{"path": "/"}}\' hx-trigger="change" '
                'hx-target="#browser" hx-swap="innerHTML">\n'
                f'    {hhmm} <span class="muted">{kinds.get(point.kind, point.kind)} · {size} · '
                f"{point.file_count} files</span>{badge_html}</label>\n"
            )
        out.append("</fieldset>\n")
    # Snapshot ids and damaged files are escaped; the rest are dates, numbers, fixed words.
    return mark_safe("".join(out))


@register.simple_tag
def recovery_calendar(months, *, times_url: str, region_query: str = "") -> str:
    """Recover Data's calendar: a table for each of ``months`` (``views._calendar``), a day
    holding points a link to its times (``?day=``, plus ``region_query``: ``&region=…``)
    marked with how many, the chosen day ``aria-current``. Built here for the same reason
    as ``recovery_times``: twelve months of cells through the template loop, 365 of them
    links with three ``date`` filters each, were most of the page's CPU for a machine
    backed up every day. The same HTML as that loop, but whitespace."""
    from django.utils.dates import MONTHS, WEEKDAYS_ABBR

    head = "".join(f'<th scope="col">{WEEKDAYS_ABBR[d]}</th>' for d in range(7))
    extra = html.escape(region_query)
    out = []
    for month in months:
        out.append(
            f'<table class="calendar" data-month="{month["year"]}-{month["month"]}">\n'
            f"  <caption>{month['name']} {month['year']}</caption>\n"
            f"  <thead><tr>{head}</tr></thead>\n  <tbody>\n"
        )
        for week in month["weeks"]:
            cells = []
            for day in week:
                d = day["date"]
                if not day["in_month"]:
                    cells.append('<td class="other-month"></td>')
                elif day["count"]:
                    n = day["count"]
                    selected, current = (
                        (" selected", ' aria-current="date"') if day["chosen"] else ("", "")
                    )
                    cells.append(
                        f'<td class=""><a class="calendar-day has-points'
                        f'{selected}" href="{times_url}?day={d:%Y-%m-%d}'
                        f'{extra}" data-day="{d:%Y-%m-%d}"{current} aria-label="{d:%d} '
                        f'{MONTHS[d.month]} {d:%Y}, {n} recovery point{"" if n == 1 else "s"}">'
                        f"{d.day}</a></td>"
                    )
                else:
                    cells.append(f'<td class=""><span class="calendar-day">{d.day}</span></td>')
            out.append(f"  <tr>{''.join(cells)}</tr>\n")
        out.append("  </tbody>\n</table>\n")
    # Dates, numbers and fixed words; the URL is reversed from UUIDs, the query escaped.
    return mark_safe("".join(out))
