"""Recover Data pages: choose the machines, then the wizard (recovery point from a calendar,
browse or search, select, options, recover), answers polled from the cache, file versions
and downloads. Every machine loads through ``services.source_for_user`` (the data's machine,
registered or gone) or ``services.machine_for_user`` (a registered one: Backup Operator
or higher); every htmx endpoint also renders as a full page."""

from __future__ import annotations

import calendar
import contextlib
import re
import time
from datetime import date, datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_POST

from agents.runtime import protocol
from jobs.recovery import services
from jobs.schedule import zone
from portal.access import get_for_user
from portal.models import Role
from vaults import activity
from vaults.activity import Operation
from vaults.models import Vault

NO_ANSWER_AFTER = 30  # seconds before "the agent has not answered"
MONTHS_SHOWN = 12


# -- step 1: machines -------------------------------------------------------------------------
@login_required
@require_GET
def start(request):
    """Choose the machine the data came from (registered, or gone: unregistered or
    replaced), then the registered one to recover onto.

    ``?vault=<id>`` (the vault menu's Recover Data) offers that vault's machines only;
    ``?source=<id>`` (a machine page's Recover Data) starts at the second step.
    """
    vault = None
    if request.GET.get("vault"):
        try:
            vault = get_for_user(request.user, Vault, pk=request.GET["vault"])
        except ValidationError:  # not a UUID
            raise Http404("No such vault") from None
    machines = services.sources_for_user(request.user)
    if vault is not None:
        machines = [m for m in machines if m.vault_id == vault.pk]
    source = None
    if request.GET.get("source"):
        try:
            source = services.source_for_user(request.user, request.GET["source"])
        except ValidationError:
            raise Http404("No such machine") from None
        vault = source.vault
        target_id = request.GET.get("target")
        if target_id:
            try:
                services.pair_for_user(request.user, source.pk, target_id)
            except services.RecoveryRefused as exc:
                messages.error(request, str(exc))
            else:
                return redirect("recovery:wizard", source.pk, target_id)
    return render(
        request,
        "recovery/start.html",
        {
            "machines": machines,
            "vault": vault,
            "source": source,
            "targets": services.targets_for(source) if source else [],
            "gone": [m for m in machines if m.is_gone],
        },
    )


# -- step 2..4: the wizard ----------------------------------------------------------------------
def _calendar(days: list[tuple[date, int]], chosen: date | None) -> list[dict]:
    """Months (newest first) with their weeks; a day holding recovery points says how many
    (``count``), and the ``chosen`` one is marked."""
    counts = dict(days)
    months = sorted({(d.year, d.month) for d in counts}, reverse=True)[:MONTHS_SHOWN]
    cal = calendar.Calendar(firstweekday=0)
    out = []
    for year, month in months:
        weeks = [
            [
                {
                    "date": d,
                    "in_month": d.month == month,
                    "count": counts.get(d, 0) if d.month == month else 0,
                    "chosen": d == chosen and d.month == month,
                }
                for d in week
            ]
            for week in cal.monthdatescalendar(year, month)
        ]
        out.append(
            {"year": year, "month": month, "name": calendar.month_name[month], "weeks": weeks}
        )
    return out


def _times_day(source, day: date, tz, *, region: str, replicated: set[str]) -> dict:
    """``day``'s recovery points (the times shown for it) as ``recovery_times`` takes them;
    on the secondary, each point says whether it was copied there (``replicated``)."""
    points = services.recovery_points_on(source, day=day, tz=tz)
    if region == protocol.REGION_SECONDARY:
        for point in points:
            point.on_secondary = point.snapshot_id in replicated
    times = [{"point": p, "time": p.created_at.astimezone(tz)} for p in points]
    return {"date": day, "points": times}


def _wizard_region(region: str, source) -> tuple[str, str, set[str]]:
    """The copy the wizard reads (``?region=``), why it cannot (shown), and for the secondary
    the points already copied there."""
    region = region or protocol.REGION_PRIMARY
    if region == protocol.REGION_PRIMARY:
        return region, "", set()
    try:
        region = services.region_check(source.vault, region)
        return region, "", services.replicated_point_ids(source)
    except services.RecoveryRefused as exc:
        if region not in protocol.REGIONS:
            region = protocol.REGION_PRIMARY
        return region, str(exc), set()


def _region(request) -> str:
    return request.POST.get("region") or protocol.REGION_PRIMARY


def _pair(request, source_id, target_id):
    try:
        return services.pair_for_user(request.user, source_id, target_id)
    except services.RecoveryRefused as exc:
        raise PermissionDenied(str(exc)) from None


def _pair_to_start(request, source_id, target_id, operation: str):
    """The pair for a restore or download; a refusal (a Reader, a machine of another vault)
    is recorded in the activity log of the vault the person can see."""
    try:
        return _pair(request, source_id, target_id)
    except PermissionDenied as exc:
        # An outsider gets 404 here: a vault they cannot see keeps no entry of theirs.
        seen = services.source_for_user(request.user, source_id, role=Role.READER)
        activity.record(
            operation=operation,
            request=request,
            vault=seen.vault,
            resource=seen,
            outcome=activity.Outcome.REFUSED,
            reason=str(exc),
        )
        raise


@login_required
@require_GET
def wizard(request, source_id, target_id):
    source, target = _pair(request, source_id, target_id)
    return _wizard_page(request, source, target, region=request.GET.get("region", ""))


DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
POINT_ID = re.compile(r"[0-9a-f]{1,64}")


def _point_day(source, snapshot_id: str, tz) -> date | None:
    """The day (in ``tz``) of ``source``'s recovery point ``snapshot_id``, or None when it
    has no such point (or the id is not one)."""
    if not POINT_ID.fullmatch(snapshot_id):
        return None
    at = (
        services.recovery_points(source)
        .filter(snapshot_id=snapshot_id)
        .values_list("created_at", flat=True)
        .first()
    )
    return None if at is None else at.astimezone(tz).date()


@login_required
@require_GET
def times(request, source_id, target_id):
    """One day's recovery times, ``?day=YYYY-MM-DD`` (or the day of the point ``?rp=``, for
    a version or search result whose day is not loaded yet): the fragment htmx adds when a
    day of the calendar is chosen; without htmx, the wizard with that day chosen. The same
    checks as the wizard (``_pair``)."""
    source, target = _pair(request, source_id, target_id)
    tz = zone(source.time_zone)
    rp = request.GET.get("rp", "")
    if rp:
        day = _point_day(source, rp, tz)
        if day is None:
            raise Http404("No such recovery point of this machine")
    else:
        text = request.GET.get("day", "")
        try:
            day = date.fromisoformat(text) if DAY.fullmatch(text) else None
        except ValueError:  # 2026-02-30
            day = None
        if day is None:
            return HttpResponseBadRequest(
                "Choose a day of the calendar: the day is given as YYYY-MM-DD "
                "(for example 2026-12-06).",
                content_type="text/plain; charset=utf-8",
            )
    if not request.htmx:
        response = _wizard_page(
            request, source, target, region=request.GET.get("region", ""), day=day
        )
        patch_vary_headers(response, ["HX-Request"])
        return response
    region, _, replicated = _wizard_region(request.GET.get("region", ""), source)
    response = render(
        request,
        "recovery/_times.html",
        {
            "days": [_times_day(source, day, tz, region=region, replicated=replicated)],
            "browse_url": reverse("recovery:ask", args=[source.pk, target.pk, "browse"]),
            "reads_secondary": region == protocol.REGION_SECONDARY,
        },
    )
    patch_vary_headers(response, ["HX-Request"])  # the same URL is the full page without it
    return response


def _wizard_page(
    request,
    source,
    target,
    *,
    region: str,
    day: date | None = None,
    point: str = "",
    status: int = 200,
):
    """The wizard with ``day``'s times (default: the newest day holding points), or those of
    the day of ``point`` (a refused restore's), that point chosen; the day's only point is
    chosen too."""
    tz = zone(source.time_zone)
    days = services.recovery_days(source, months=MONTHS_SHOWN, tz=tz)
    point_day = _point_day(source, point, tz)
    if point_day is None:
        point = ""
    else:
        day = point_day
    chosen = day or (days[-1][0] if days else None)
    region, region_error, replicated = _wizard_region(region, source)
    chosen_days = (
        [_times_day(source, chosen, tz, region=region, replicated=replicated)] if chosen else []
    )
    if not point and chosen_days:
        # A day with a single point it can restore: that point is chosen, no click needed
        # (recovery.js does the same for a day chosen later).
        choosable = [
            item["point"].snapshot_id
            for item in chosen_days[0]["points"]
            if region != protocol.REGION_SECONDARY or item["point"].on_secondary
        ]
        point = choosable[0] if len(choosable) == 1 else ""
    return render(
        request,
        "recovery/wizard.html",
        {
            "source": source,
            "target": target,
            "same": source.pk == target.pk,
            "region": region,
            "region_error": region_error,
            "secondary_region": protocol.REGION_SECONDARY,
            "reads_secondary": region == protocol.REGION_SECONDARY,
            "days": days,
            "months": _calendar(days, chosen),
            "chosen_point": point,
            "chosen_days": chosen_days,
            "browse_url": reverse("recovery:ask", args=[source.pk, target.pk, "browse"]),
            "times_url": reverse("recovery:times", args=[source.pk, target.pk]),
            "region_query": f"&region={region}" if region == protocol.REGION_SECONDARY else "",
            "tz": tz,
            "conflicts": services.CONFLICTS,
            "max_download": services.DOWNLOAD_MAX_BYTES,
            "cli_option": services.cli_source_option(source=source, target=target),
            "system_state_path": services.SYSTEM_STATE,
        },
        status=status,
    )


@login_required
@require_POST
def ask(request, source_id, target_id, kind):
    """Send one question to the target's agent; answer with a placeholder that polls.

    A POST (with the CSRF token htmx sends from ``<body hx-headers>``): it sends an agent a
    task, so a link on another site or a prefetching browser must not be able to."""
    source, target = _pair(request, source_id, target_id)
    data = request.POST
    args: dict = {}
    if kind == "browse":
        args = {
            "recovery_point": data.get("rp", ""),
            "path": data.get("path") or "/",
        }
        if not args["recovery_point"]:
            raise Http404("Choose a recovery point")
    elif kind == "search":
        q = data.get("q", "").strip()
        if not q:
            return _render(
                request, "recovery/_message.html", {"message": "Type part of a file name."}
            )
        args = {"pattern": q[:200]}
        if data.get("scope") == "point" and data.get("rp"):
            args["recovery_points"] = [data["rp"]]
    elif kind == "versions":
        args = {"path": data.get("path", "")}
        if not (args["path"].startswith("/") or services.is_system_state(args["path"])):
            raise Http404("No such file")
    elif kind != "points":
        raise Http404("No such question")
    try:
        question = services.question_ask(
            user=request.user, source=source, target=target, kind=kind, region=_region(request),
            **args,
        )  # fmt: skip
    except services.RecoveryRefused as exc:
        return _render(request, "recovery/_message.html", {"message": str(exc), "error": True})
    return _render(
        request,
        "recovery/_pending.html",
        {"request_id": question.request_id, "target": target, "kind": kind, "waited": 0},
    )


def _render(request, template, context):
    context = {**context, "full_page": not request.htmx, "partial": template}
    if request.htmx:
        return render(request, template, context)
    return render(request, "recovery/partial_page.html", context)


@login_required
@require_GET
def answer(request, request_id):
    """The agent's answer when it has come (rendered, never stored), else still waiting."""
    question = services.question_for_user(request.user, request_id)
    if question is None:
        return _render(
            request,
            "recovery/_message.html",
            {"message": "This answer has expired; ask again.", "error": True},
        )
    source = services.source_for_user(request.user, question["source"])
    target = services.machine_for_user(request.user, question["target"])
    body = services.answer_get(request_id)
    waited = time.time() - question["asked"]
    if body is None:
        return _render(
            request,
            "recovery/_pending.html",
            {
                "request_id": request_id,
                "target": target,
                "kind": question["kind"],
                "waited": waited,
                "late": waited > NO_ANSWER_AFTER,
            },
        )
    context = {"source": source, "target": target, "body": body, "kind": question["kind"]}
    if not body.get("ok"):
        context["cli_option"] = services.cli_source_option(source=source, target=target)
        return _render(request, "recovery/_agent_error.html", context)
    result = _with_times(body.get("result") or {})
    context["result"] = result
    if question["kind"] == "browse":
        path = result.get("path") or "/"
        context["crumbs"] = _crumbs(path)
        head, sep, _ = path.rpartition("/")
        context["parent"] = (head or "/") if sep else "/"  # system-state's parent is /
        context["system_state_path"] = services.SYSTEM_STATE
    template = {
        "points": "recovery/_points.html",
        "browse": "recovery/_browse.html",
        "search": "recovery/_search.html",
        "versions": "recovery/_versions.html",
    }[question["kind"]]
    return _render(request, template, context)


def _crumbs(path: str) -> list[dict]:
    """The folder's crumbs; the System State part (``system-state/...``) starts with its
    own name instead of a folder of /."""
    crumbs, acc = [], ""
    state = not path.startswith("/")
    for part in [p for p in path.split("/") if p]:
        acc = part if state and not acc else f"{acc}/{part}"
        name = "System State" if state and acc == services.SYSTEM_STATE else part
        crumbs.append({"name": name, "path": acc})
    return crumbs


def _with_times(value):
    """The answer with its ISO 8601 ``time``/``mtime`` strings as datetimes (for ``|date``)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("time", "mtime") and isinstance(item, str):
                with contextlib.suppress(ValueError):
                    item = datetime.fromisoformat(item)
            out[key] = _with_times(item)
        return out
    if isinstance(value, list):
        return [_with_times(item) for item in value]
    return value


def _selection(request) -> list[str]:
    return [p for p in request.POST.getlist("paths") if p]


@login_required
@require_POST
def restore(request, source_id, target_id):
    source, target = _pair_to_start(request, source_id, target_id, Operation.RESTORE_START)
    location = request.POST.get("location", "original")
    try:
        job = services.restore_start(
            user=request.user,
            source=source,
            target=target,
            recovery_point=request.POST.get("rp", ""),
            paths=_selection(request),
            folder=request.POST.get("folder", "") if location == "another" else "",
            on_conflict=request.POST.get("on_conflict", protocol.CONFLICT_COPY),
            restore_permissions=request.POST.get("restore_permissions") == "on",
            region=_region(request),
        )
    except services.RecoveryRefused as exc:
        # 400 with the wizard and the reason (the form's choices are the person's to fix)
        messages.error(request, str(exc))
        return _wizard_page(
            request,
            source,
            target,
            region=_region(request),
            point=request.POST.get("rp", ""),
            status=400,
        )
    what = (
        "System State"
        if job.details.get("system_state") and job.details["items"] == 1
        else f"{job.details['items']} item" + ("" if job.details["items"] == 1 else "s")
    )
    messages.success(request, f"Recovery of {what} of {source.name} onto {target.name} started.")
    return redirect("jobs:detail", job.pk)


@login_required
@require_POST
def download(request, source_id, target_id):
    source, target = _pair_to_start(request, source_id, target_id, Operation.DOWNLOAD_START)
    try:
        job = services.download_start(
            user=request.user,
            source=source,
            target=target,
            recovery_point=request.POST.get("rp", ""),
            paths=_selection(request),
            region=_region(request),
        )
    except services.RecoveryRefused as exc:
        messages.error(request, str(exc))
        return _back_to_wizard(request, source, target)
    return redirect("recovery:download_status", job.pk)


def _back_to_wizard(request, source, target):
    url = wizard_url(source, target)
    if _region(request) == protocol.REGION_SECONDARY:
        url += f"?region={protocol.REGION_SECONDARY}"
    return redirect(url)


@login_required
@require_GET
def download_status(request, job_id):
    job, archive = services.download_for_user(request.user, job_id)
    return _render(
        request,
        "recovery/_download.html",
        {"job": job, "ready": archive is not None, "size": archive.size if archive else 0},
    )


@login_required
@require_GET
def download_file(request, job_id):
    job, archive = services.download_for_user(request.user, job_id)
    if archive is None:
        raise Http404("This download is not ready or has expired")
    services.download_served(user=request.user, job=job, size=archive.size)
    name = f"haven-{job.details.get('source_name', 'files')}-{str(job.pk)[:8]}.tar.gz"
    # Streamed from storage a block at a time; under ASGI an async iterator, which Django
    # sends as it goes (a sync one it would first read whole into memory).
    chunks = archive.async_chunks() if isinstance(request, ASGIRequest) else archive.chunks()
    response = StreamingHttpResponse(chunks, content_type="application/gzip")
    response["Content-Length"] = str(archive.size)
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response


def wizard_url(source, target) -> str:
    return reverse("recovery:wizard", args=[source.pk, target.pk])
