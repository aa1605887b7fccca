"""Pages of the jobs app: Backup Jobs, a job, Back up now, the policy editor, recovery
points, a vault's Backup items and Backup Alerts. Each loads through ``portal.access``."""

from __future__ import annotations

import contextlib
import uuid
from datetime import date

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import Machine
from agents.runtime import protocol
from agents.runtime import throttling as throttle_rules
from agents.runtime.protocol import DRILL_LARGEST
from jobs import policy_rules, retention, selectors, services
from jobs.models import BackupPolicy, Job
from jobs.schedule import Schedule, describe, next_run, zone
from portal.access import check_role, for_user, get_for_user, get_with_role, has_role
from portal.models import Role
from vaults import activity, security_pin
from vaults.activity import Operation
from vaults.models import Vault

VERIFY_WEEKS_DEFAULT = BackupPolicy._meta.get_field("verify_weeks").default
WEEKDAYS = list(enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")))
MONTHS = list(enumerate(policy_rules.MONTH_NAMES, start=1))


def _machine(request, machine_id, role=Role.READER) -> Machine:
    return get_for_user(
        request.user,
        Machine.objects.select_related("vault").filter(unregistered_at__isnull=True),
        role=role,
        pk=machine_id,
    )


# --- Backup Jobs ------------------------------------------------------------------------
@login_required
@require_GET
def job_list(request):
    filters = selectors.JobFilters.from_query(request.GET)
    try:
        if filters.vault:
            uuid.UUID(filters.vault)
    except ValueError:
        raise Http404("No such vault") from None
    page, counts = selectors.job_list(request.user, filters, page=request.GET.get("page", 1))
    machines = list(
        for_user(request.user, Machine)
        .filter(unregistered_at__isnull=True)
        .order_by("name")
        .values("id", "name")
    )
    vault_ids = sorted({str(job.vault_id) for job in page.object_list})[:20]
    # Named in the title and breadcrumbs when the list is one vault's (the vault menu's
    # Backup jobs); a vault the user may not see, or a malformed id, is simply not named.
    vault = None
    if filters.vault:
        with contextlib.suppress(ValidationError):
            vault = for_user(request.user, Vault).filter(pk=filters.vault).first()
    machine_name = ""
    if filters.machine:
        machine_name = next((m["name"] for m in machines if str(m["id"]) == filters.machine), "")
    return render(
        request,
        "jobs/list.html",
        {
            "page": page,
            "jobs": selectors.with_live_progress(page.object_list),
            "counts": selectors.status_counts_labelled(counts),
            "total": sum(counts.values()),
            "filters": filters,
            "query": filters.as_query(),
            "base_query": filters.as_query(status=""),
            "machines": machines,
            "statuses": Job.Status.choices,
            "operations": Job.Operation.choices,
            "ranges": [(k, v[0]) for k, v in selectors.RANGES.items()],
            "watch": "&".join(f"watch=vault:{v}" for v in vault_ids),
            "vault": vault,
            "machine_name": machine_name,
        },
    )


def _job(request, job_id, role=Role.READER) -> Job:
    return get_for_user(
        request.user, Job.objects.select_related("machine", "vault"), role=role, pk=job_id
    )


@login_required
@require_GET
def job_detail(request, job_id):
    job = selectors.with_live_progress([_job(request, job_id)])[0]
    template = (
        "jobs/_job_live.html" if request.GET.get("fragment") == "live" else "jobs/detail.html"
    )
    return render(request, template, {"job": job, "oob": False})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = _job(request, job_id, role=Role.BACKUP_OPERATOR)
    try:
        job = services.job_cancel(job=job, user=request.user)
    except services.JobNotCancellable as exc:
        messages.error(request, str(exc))
    else:
        if job.status == Job.Status.CANCELLED:
            messages.success(request, "The job was cancelled.")
        else:
            messages.info(request, "Cancelling: the agent stops within a few seconds.")
    if request.htmx:
        job = selectors.with_live_progress([job])[0]
        return render(request, "jobs/_job_live.html", {"job": job, "oob": False})
    return redirect("jobs:detail", job_id=job.pk)


# --- Seeding ----------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def seed(request, machine_id):
    """Where the machine's offline seeding stands, and the import of a seed disk mounted on
    the portal's host (Contributor or higher; inside HAVEN_SEED_IMPORT_ROOT only)."""
    machine, role = get_with_role(
        request.user,
        Machine.objects.select_related("vault").filter(unregistered_at__isnull=True),
        pk=machine_id,
    )
    can_import = Role.rank(role) >= Role.rank(Role.CONTRIBUTOR)
    error, path, status = "", "", 200
    if request.method == "POST":
        path = request.POST.get("path", "")[:1000]
        if not can_import:
            raise PermissionDenied("Importing a seed needs the Contributor role or higher.")
        try:
            folder = services.seed_path_resolve(path)
            job = services.seed_import_start(machine=machine, folder=folder, user=request.user)
        except services.SeedRefused as exc:
            error, status = exc.message, 400
        else:
            messages.success(request, f"Import of the seed of {machine.name} started.")
            return redirect("jobs:detail", job_id=job.pk)
    policy = BackupPolicy.objects.filter(machine=machine).first()
    imports = list(selectors.seed_imports(machine)[:5])
    exports = list(selectors.seed_exports(machine)[:5])
    context = {
        "machine": machine,
        "policy": policy,
        "waiting": selectors.seed_waiting(machine),
        "imports": imports,
        "exports": exports,
        "written": selectors.seed_written(machine),
        "imported": next((j for j in imports if j.status == Job.Status.COMPLETED), None),
        "can_import": can_import,
        "import_root": services.seeding.import_root(),
        "path": path,
        "error": error,
    }
    return render(request, "jobs/seed.html", context, status=status)


# --- Back up now ------------------------------------------------------------------------
def _retain_until(raw) -> tuple[date | None, str]:
    if not raw:
        return None, ""
    try:
        return date.fromisoformat(raw), ""
    except ValueError:
        return None, "Enter a date like 2030-12-31."


@login_required
@require_http_methods(["GET", "POST"])
def backup_now(request, machine_id):
    machine = _machine(request, machine_id)
    if request.method == "POST":
        activity.require_role(
            request,
            vault=machine.vault,
            role=Role.BACKUP_OPERATOR,
            operation=Operation.BACKUP_NOW,
            resource=machine,
        )
    else:
        check_role(request.user, machine.vault.subscription_id, Role.BACKUP_OPERATOR)
    policy = BackupPolicy.objects.filter(machine=machine).first()
    data = request.POST if request.method == "POST" else request.GET
    retain_until, error = _retain_until(data.get("retain_until"))
    blockers = selectors.backup_blockers(machine=machine, retain_until=retain_until)
    running = blockers.running
    error = error or blockers.retain_until
    status = 200
    if request.method == "POST" and (
        running is not None
        or blockers.stopped
        or (blockers.seed_waiting and not blockers.seed_folder)
    ):
        status = 409
    elif request.method == "POST" and not error and policy is not None:
        try:
            job = services.backup_now(machine=machine, user=request.user, retain_until=retain_until)
        except services.BackupAlreadyRunning as exc:
            running = exc.job
            status = 409
        except services.ProtectionStopped:
            status = 409
        except ValidationError as exc:
            error = " ".join(exc.message_dict.get("retain_until", exc.messages))
        else:
            if job.operation == Job.Operation.SEED_EXPORT:
                messages.success(
                    request,
                    f"Offline backup of {machine.name} to {blockers.seed_folder} started.",
                )
            else:
                messages.success(request, f"Backup of {machine.name} started.")
            return redirect("jobs:detail", job_id=job.pk)
    tagging, inherited = services.adhoc_retention(
        machine=machine, retain_until=None if error else retain_until
    )
    context = {
        "machine": machine,
        "policy": policy,
        "running": running,
        "stopped": blockers.stopped,
        "seed_waiting": blockers.seed_waiting,
        "seed_folder": blockers.seed_folder,
        "seed_written": selectors.seed_written(machine) if blockers.seed_waiting else None,
        "retain_until": data.get("retain_until", ""),
        "retain_error": error,
        "today": selectors.machine_today(machine).isoformat(),
        "tagging": tagging,
        "inherited": inherited,
        "sentence": services.retention_sentence(tagging, machine.time_zone),
        "schedule": describe(Schedule.from_spec(policy.spec())) if policy else "",
        "weekly": policy is not None and policy.frequency == "weekly",
    }
    if request.htmx and request.GET.get("fragment") == "retention":
        return render(request, "jobs/_adhoc_retention.html", context)
    return render(request, "jobs/backup_now.html", context, status=status)


# --- Verify now -------------------------------------------------------------------------
@login_required
@require_POST
def verify_now(request, machine_id):
    """Start a verify of every pack of the machine (docs/verify.md); Backup Operator and up."""
    machine = _machine(request, machine_id)
    return _start_on_machine(
        request,
        machine,
        operation=Operation.VERIFY_NOW,
        start=services.verify_start,
        refused=services.VerifyRefused,
        started=f"Verify of {machine.name} started.",
    )


def _start_on_machine(request, machine, *, operation, start, refused, started: str):
    """A Backup Operator's one-POST job on a machine (Verify now, Run restore drill): the
    role checked (a refusal logged as ``operation``), the job started by the service
    ``start``, whose ``refused`` exception is shown on the machine's page."""
    activity.require_role(
        request, vault=machine.vault, role=Role.BACKUP_OPERATOR, operation=operation,
        resource=machine,
    )  # fmt: skip
    try:
        job = start(machine=machine, user=request.user)
    except refused as exc:
        messages.error(request, str(exc))
        return redirect("agents:detail", machine_id=machine.pk)
    messages.success(request, started)
    return redirect("jobs:detail", job_id=job.pk)


# --- Compact now ------------------------------------------------------------------------
@login_required
@require_POST
def compact_now(request, machine_id):
    """Start a Compact job of the machine (Backup Operator); one already running is shown.
    An unregistered machine has no agent to do it (``_machine``: 404)."""
    machine = _machine(request, machine_id)
    activity.require_role(
        request,
        vault=machine.vault,
        role=Role.BACKUP_OPERATOR,
        operation=Operation.COMPACT_NOW,
        resource=machine,
    )
    try:
        job = services.compact_start(machine=machine, user=request.user)
    except services.CompactAlreadyRunning as exc:
        messages.info(request, f"A compaction of {machine.name} is already running.")
        return redirect("jobs:detail", job_id=exc.job.pk)
    except services.CompactRefused as exc:  # as Verify now's refusal
        messages.error(request, exc.message)
        return redirect("agents:detail", machine_id=machine.pk)
    activity.record(
        operation=Operation.COMPACT_NOW,
        user=request.user,
        vault=machine.vault,
        resource=machine,
        detail={"job": str(job.pk)},
    )
    messages.success(request, f"Compaction of {machine.name} started.")
    return redirect("jobs:detail", job_id=job.pk)


# --- Backup policy ----------------------------------------------------------------------
def _form_values(spec: dict) -> dict:
    """Flatten a spec into the editor's field values."""
    r = spec.get("retention", {})
    defaults = policy_rules.default_spec()["retention"]
    values = {
        "items": "\n".join(spec.get("items", [])),
        "exclude_globs": "\n".join(spec.get("exclude_globs", [])),
        "exclude_types": ", ".join(spec.get("exclude_types", [])),
        "frequency": spec.get("frequency", "daily"),
        "times": list(spec.get("times", [])) + [""] * (3 - len(spec.get("times", []))),
        "weekdays": spec.get("weekdays", []),
        "initial_backup": spec.get("initial_backup", "online"),
        "system_state": bool(spec.get(protocol.POLICY_SYSTEM_STATE)),
        "seed_staging": spec.get(protocol.POLICY_SEED_STAGING, ""),
    }
    for level in ("daily", "weekly", "monthly", "yearly"):
        rule = r.get(level)
        values[f"{level}_enabled"] = bool(rule)
        rule = rule or defaults[level]
        for key, value in rule.items():
            values[f"{level}_{key}"] = value
    return values


def _drill_context(machine, policy, found=None) -> dict:
    """The editor's Restore drills section (jobs/_drill_policy.html)."""
    found = found or services.DrillSettings.of(policy)
    return {
        "values": {
            "frequency": found.frequency,
            "sample": found.sample,
            "percent": f"{found.percent:g}",
            "cap_mb": found.cap_mb,
            "machine_id": found.machine.pk if found.machine else machine.pk,
            "scratch": found.scratch,
        },
        "frequencies": BackupPolicy.DrillFrequency.choices,
        "samples": BackupPolicy.DrillSample.choices,
        "largest": DRILL_LARGEST,
        "machines": Machine.objects.filter(
            vault_id=machine.vault_id, unregistered_at__isnull=True
        ).order_by("name"),
    }


def _policy_context(machine, policy, spec, problems, values=None, drill=None) -> dict:
    tz = zone(machine.time_zone)
    preview = None
    if not problems:
        preview = retention.preview(spec, tz, timezone.now())
    upcoming = next_run(Schedule.from_spec(spec), tz, timezone.now()) if not problems else None
    values = values or _form_values(spec)
    values.setdefault("verify_weeks", policy.verify_weeks if policy else VERIFY_WEEKS_DEFAULT)
    return {
        "machine": machine,
        "policy": policy,
        "values": values,
        "problems": problems,
        "preview": preview,
        "upcoming": upcoming,
        "drift": services.policy_drift(policy),
        "weekdays": WEEKDAYS,
        "months": MONTHS,
        "month_days": [*range(1, 29), 0],
        "weeks": retention.WEEKS,
        "retention_lines": policy_rules.describe_retention(spec) if not problems else [],
        "protection": selectors.protection_summary(machine, policy),
        "drill": _drill_context(machine, policy, drill),
        "security_features": machine.vault.security_features,
        "verify_limits": {"min": services.verify.MIN_WEEKS, "max": services.verify.MAX_WEEKS},
        "limits": {
            "days": policy_rules.MAX_DAYS,
            "weeks": policy_rules.MAX_WEEKS,
            "months": policy_rules.MAX_MONTHS,
            "years": policy_rules.MAX_YEARS,
        },
    }


def _posted_values(post) -> dict:
    values = {key: post.get(key, "") for key in post}
    for key in (
        "times",
        "weekdays",
        "weekly_weekdays",
        "monthly_days",
        "monthly_weekdays",
        "yearly_days",
        "yearly_weekdays",
        "yearly_months",
    ):
        values[key] = post.getlist(key)
    values["times"] = values["times"] + [""] * (3 - len(values["times"]))
    for key in (
        "weekdays",
        "weekly_weekdays",
        "monthly_days",
        "monthly_weekdays",
        "yearly_days",
        "yearly_weekdays",
        "yearly_months",
    ):
        numbers = (policy_rules.whole_number(v) for v in values[key])
        values[key] = [n for n in numbers if n is not None]
    for level in ("daily", "weekly", "monthly", "yearly"):
        values[f"{level}_enabled"] = post.get(f"{level}_enabled") == "on"
    values["system_state"] = post.get(protocol.POLICY_SYSTEM_STATE) == "on"
    return values


@login_required
@require_http_methods(["GET", "POST"])
def policy_edit(request, machine_id):
    machine = _machine(request, machine_id)
    policy = BackupPolicy.objects.filter(machine=machine).first()
    if request.method == "GET":
        spec = policy.spec() if policy else policy_rules.default_spec()
        return render(request, "jobs/policy.html", _policy_context(machine, policy, spec, {}))
    activity.require_role(
        request,
        vault=machine.vault,
        role=Role.CONTRIBUTOR,
        operation=Operation.POLICY_CHANGE,
        resource=activity.Resource(kind="backup policy", id=str(machine.pk), name=machine.name),
    )
    spec, problems = policy_rules.parse_form(request.POST)
    drill, drill_problems = services.drill_settings_parse(request.POST, machine=machine)
    problems = {**problems, **drill_problems}
    values = _posted_values(request.POST)
    verify_weeks, verify_problem = services.verify_weeks_check(
        request.POST.get("verify_weeks", VERIFY_WEEKS_DEFAULT)
    )
    if verify_problem:
        problems = {**problems, "verify_weeks": [verify_problem]}
    if not problems:
        try:
            with transaction.atomic():
                policy = services.policy_save(
                    machine=machine,
                    spec=spec,
                    user=request.user,
                    pin=request.POST.get("security_pin", ""),
                )
                services.drill_settings_save(policy=policy, found=drill, user=request.user)
        except ValidationError as exc:
            problems = exc.message_dict
        except services.DrillRefused as exc:
            problems = {"drill_machine": [str(exc)]}
        else:
            assert verify_weeks is not None
            services.verify_weeks_set(policy=policy, weeks=verify_weeks)
            messages.success(
                request, f"Backup policy of {machine.name} saved (version {policy.version})."
            )
            return redirect("jobs:policy", machine_id=machine.pk)
    context = _policy_context(machine, policy, spec, problems, values, drill)
    return render(request, "jobs/policy.html", context, status=400)


@login_required
@require_POST
def policy_preview(request, machine_id):
    machine = _machine(request, machine_id)
    spec, problems = policy_rules.parse_form(request.POST)
    context = _policy_context(machine, None, spec, problems, _posted_values(request.POST))
    return render(request, "jobs/_preview.html", context)


# --- Properties > Throttling ------------------------------------------------------------
def _throttle_values(spec: dict) -> dict:
    values = dict(spec)
    for key, field in (("work_kbps", "work"), ("off_kbps", "off")):
        if isinstance(spec.get(key), int):
            values[f"{field}_rate"], values[f"{field}_unit"] = throttle_rules.split_rate(spec[key])
    return values


def _throttling_context(request, machine, policy, spec, problems, values) -> dict:
    preview = not problems and throttle_rules.spec_problems(spec) == {}
    return {
        "machine": machine,
        "policy": policy,
        "drift": services.policy_drift(policy),
        "values": values,
        "problems": problems,
        "spec": spec,
        "grid": throttle_rules.week_grid(spec) if preview else None,
        "hours": [throttle_rules.format_hour(h) for h in range(25)],
        "work_rate": throttle_rules.format_rate(spec["work_kbps"]) if preview else "",
        "off_rate": throttle_rules.format_rate(spec["off_kbps"]) if preview else "",
        "weekdays": WEEKDAYS,
        "units": list(throttle_rules.UNITS),
        "limits": (
            throttle_rules.format_rate(throttle_rules.MIN_KBPS),
            throttle_rules.format_rate(throttle_rules.MAX_KBPS),
        ),
        "can_edit": has_role(request.user, machine.vault.subscription_id, Role.CONTRIBUTOR),
    }


def _posted_throttle_values(post) -> dict:
    values = {key: post.get(key, "") for key in post}
    values["work_days"] = [
        d
        for d in (throttle_rules.number_in(v, 0, 6) for v in post.getlist("work_days"))
        if d is not None
    ]
    values["enabled"] = "enabled" in post
    for key in ("work_start", "work_end"):
        values[key] = throttle_rules.number_in(post.get(key), 0, 24)
    return values


@login_required
@require_http_methods(["GET", "POST"])
def throttling(request, machine_id):
    """Machine > Properties > Throttling: saved into the policy (Contributor and up, as the
    policy: the reference's Backup Operator may not change policies)."""
    machine = _machine(request, machine_id)
    policy = BackupPolicy.objects.filter(machine=machine).first()
    if request.method == "GET":
        spec = (policy.throttle if policy and policy.throttle else None) or (
            throttle_rules.default_spec()
        )
        context = _throttling_context(request, machine, policy, spec, {}, _throttle_values(spec))
        return render(request, "jobs/throttling.html", context)
    machine = _machine(request, machine_id, role=Role.CONTRIBUTOR)
    spec, problems = throttle_rules.parse_form(request.POST)
    if not problems:
        try:
            policy = services.policy_throttle_save(
                machine=machine, throttle=spec, user=request.user
            )
        except ValidationError as exc:
            problems = exc.message_dict
        else:
            messages.success(
                request,
                f"Network throttling of {machine.name} saved "
                f"(backup policy version {policy.version}).",
            )
            return redirect("jobs:throttling", machine_id=machine.pk)
    values = _posted_throttle_values(request.POST)
    context = _throttling_context(request, machine, policy, spec, problems, values)
    return render(request, "jobs/throttling.html", context, status=400)


@login_required
@require_POST
def throttling_preview(request, machine_id):
    machine = _machine(request, machine_id)
    spec, problems = throttle_rules.parse_form(request.POST)
    values = _posted_throttle_values(request.POST)
    context = _throttling_context(request, machine, None, spec, problems, values)
    return render(request, "jobs/_throttle_preview.html", context)


# --- recovery points, backup items, alerts ----------------------------------------------
@login_required
@require_GET
def recovery_points(request, machine_id):
    """A machine's kept recovery points; a gone machine's too (its data outlives it)."""
    machine = get_for_user(
        request.user,
        Machine.objects.select_related("vault", "replaced_by"),
        role=Role.READER,
        pk=machine_id,
    )
    points = list(selectors.live_points(machine)[:500])
    return render(
        request,
        "jobs/recovery_points.html",
        {
            "machine": machine,
            "points": points,
            "latest": points[0] if points else None,
            "damaged": [p for p in points if p.is_damaged],
            "keeps_last_point": services.keeps_last_point(machine),
            "storage_used": selectors.storage_used(machine=machine),
            "tz": machine.time_zone,
            "not_restorable": services.restore_refusal(machine),
        },
    )


def _vault(request, vault_id) -> Vault:
    return get_for_user(request.user, Vault, pk=vault_id)


@login_required
@require_GET
def backup_items(request, vault_id):
    vault, role = get_with_role(request.user, Vault, pk=vault_id)
    now = timezone.now()
    items = list(selectors.backup_items(vault))
    statuses = dict(Job.Status.choices)
    for item in items:
        # Read once here: a machine without a policy raises on ``backup_policy``, and the
        # template's lookup of a missing attribute lists all of a model's (dir()) per row.
        item.policy = getattr(item, "backup_policy", None)
        item.protection = selectors.protection_summary(item, item.policy, now=now)
        item.last_job_label = statuses.get(item.last_job_status)
        item.last_job_class = Job.STATUS_CLASS.get(item.last_job_status)
    return render(
        request,
        "jobs/backup_items.html",
        {
            "vault": vault,
            "section": "backup_items",
            "items": items,
            "can_operate": Role.rank(role) >= Role.rank(Role.BACKUP_OPERATOR),
            "can_contribute": Role.rank(role) >= Role.rank(Role.CONTRIBUTOR),
            "storage_used": selectors.storage_used(vault=vault),
        },
    )


@login_required
@require_GET
def vault_alerts(request, vault_id):
    vault = _vault(request, vault_id)
    show = request.GET.get("show", "active")
    if show not in ("active", "resolved", "all"):
        show = "active"
    return render(
        request,
        "jobs/alerts.html",
        {
            "vault": vault,
            "section": "alerts",
            "alerts": selectors.vault_alerts(vault, show=show),
            "alert_counts": selectors.alert_counts(vault),
            "show": show,
        },
    )


# --- stop protection, resume, undelete --------------------------------------------------
def _item(request, machine_id, role=Role.READER) -> Machine:
    """A backup item: a registered machine, or an unregistered one with its data."""
    return get_for_user(
        request.user,
        Machine.objects.select_related("vault", "vault__subscription"),
        role=role,
        pk=machine_id,
    )


def _back(request, machine, *, only_items: bool = False) -> str:
    """Where a protection action returns: the vault's Backup items when it came from
    there (the only other page allowed), else the machine's page."""
    items = reverse("jobs:backup_items", args=[machine.vault_id])
    if items in (request.POST.get("next"), request.GET.get("next")):
        return items
    return "" if only_items else reverse("agents:detail", args=[machine.pk])


@login_required
@require_http_methods(["GET", "POST"])
def protection_stop(request, machine_id):
    """Stop backup: retain the data (Backup Operator), or delete it (Contributor, critical:
    the machine's name typed, a reason and, with security features on, a security PIN)."""
    machine, role = get_with_role(
        request.user, Machine.objects.select_related("vault", "vault__subscription"), pk=machine_id
    )
    policy = BackupPolicy.objects.filter(machine=machine).first()
    error = ""
    choice = request.POST.get("choice", "retain") if request.method == "POST" else "retain"
    if request.GET.get("choice") == "delete":
        choice = "delete"
    if request.method == "POST":
        delete = choice == "delete"
        operation = (
            activity.Operation.PROTECTION_STOP_DELETE
            if delete
            else activity.Operation.PROTECTION_STOP_RETAIN
        )
        detail = (
            {"reason": request.POST.get("reason", "")[:1000]}
            if delete
            else {"retention": request.POST.get("retention", "")[:20]}
        )
        fields = {"request": request, "vault": machine.vault, "resource": machine, "detail": detail}
        try:
            with activity.refusals_recorded(operation=operation, refused=_REFUSED, **fields):
                if delete:
                    check_role(request.user, machine.vault.subscription_id, Role.CONTRIBUTOR)
                    services.protection_delete(
                        machine=machine,
                        user=request.user,
                        confirm_name=request.POST.get("confirm_name", ""),
                        reason=request.POST.get("reason", ""),
                        pin=request.POST.get("security_pin", ""),
                    )
                    done = f"Backup data of {machine.name} deleted."
                else:
                    check_role(request.user, machine.vault.subscription_id, Role.BACKUP_OPERATOR)
                    services.protection_stop(
                        machine=machine,
                        user=request.user,
                        retention=request.POST.get("retention", ""),
                    )
                    done = f"Protection of {machine.name} stopped; its data is retained."
        except (services.ProtectionRefused, security_pin.PinRefused) as exc:
            error = str(exc)
        else:
            activity.record(operation=operation, **fields)
            messages.success(request, done)
            return redirect(_back(request, machine))
    vault = machine.vault
    context = {
        "machine": machine,
        "vault": vault,
        "policy": policy,
        "protection": selectors.protection_summary(machine, policy),
        "choice": choice,
        "error": error,
        "posted": request.POST if request.method == "POST" else {},
        "can_operate": Role.rank(role) >= Role.rank(Role.BACKUP_OPERATOR),
        "can_contribute": Role.rank(role) >= Role.rank(Role.CONTRIBUTOR),
        "retentions": BackupPolicy.StopRetention.choices,
        "pin_minutes": security_pin.minutes_valid(),
        "next": _back(request, machine, only_items=True),
    }
    return render(request, "jobs/protection_stop.html", context, status=400 if error else 200)


_REFUSED = (PermissionDenied, services.ProtectionRefused, security_pin.PinRefused)


def _simple_action(request, machine_id, *, operation, service, done: str):
    """Resume backup and Undelete: one POST, Backup Operator, recorded either way."""
    machine = _item(request, machine_id)
    fields = {"request": request, "vault": machine.vault, "resource": machine}
    try:
        with activity.refusals_recorded(operation=operation, refused=_REFUSED, **fields):
            check_role(request.user, machine.vault.subscription_id, Role.BACKUP_OPERATOR)
            service(machine=machine, user=request.user)
    except services.ProtectionRefused as exc:
        messages.error(request, str(exc))
    else:
        activity.record(operation=operation, **fields)
        messages.success(request, done.format(name=machine.name))
    return redirect(_back(request, machine))


@login_required
@require_POST
def protection_resume(request, machine_id):
    return _simple_action(
        request,
        machine_id,
        operation=activity.Operation.PROTECTION_RESUME,
        service=services.protection_resume,
        done="Backup of {name} resumed.",
    )


@login_required
@require_POST
def protection_undelete(request, machine_id):
    return _simple_action(
        request,
        machine_id,
        operation=activity.Operation.UNDELETE,
        service=services.protection_undelete,
        done="Backup data of {name} undeleted: protection stopped, data retained.",
    )


# --- restore drills (docs/drills.md) ------------------------------------------------------
@login_required
@require_POST
def drill_run(request, machine_id):
    """Run restore drill: one POST from the machine's page, Backup Operator and up."""
    machine = _item(request, machine_id)
    return _start_on_machine(
        request,
        machine,
        operation=Operation.DRILL_START,
        start=services.drill_start,
        refused=services.DrillRefused,
        started=f"Restore drill of {machine.name} started.",
    )
