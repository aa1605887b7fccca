"""Vault pages. Each view loads through ``portal.access`` (the permission check) and calls
``vaults.services`` / ``vaults.selectors``; none saves a model itself.

Roles: Reader sees everything here; Backup Operator downloads and revokes vault
credentials; Contributor creates and deletes vaults, retries deployments, changes the
storage redundancy and the security settings, and generates security PINs.
"""

from __future__ import annotations

import contextlib
import csv
from datetime import UTC

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal import access
from portal.models import ResourceGroup, Role, Subscription
from portal.services import SUBSCRIPTION_NAME_RULE
from portal.views.subscriptions import RETURN_TO_VAULT_CREATE
from vaults import activity, security_pin, selectors, services
from vaults.activity import Operation
from vaults.chart import usage_chart_svg
from vaults.credentials import (
    VALID_FOR,
    credential_resource,
    credentials_issue,
    credentials_revoke,
)
from vaults.models import Vault, VaultCredential

AGENT_INSTALLER_URL = "/machines/agent/installer/"
NEW_RG = "__new__"
WIZARD_STEPS = [("basics", "Basics"), ("tags", "Tags"), ("review", "Review + create")]


def _can(user, vault: Vault, role: str) -> bool:
    return access.has_role(user, vault.subscription_id, role)


def _vault_context(request, vault: Vault, section: str) -> dict:
    rank = Role.rank(access.role_in(request.user, vault.subscription_id) or Role.READER)
    return {
        "vault": vault,
        "section": section,
        "can_contribute": rank >= Role.rank(Role.CONTRIBUTOR),
        "can_operate": rank >= Role.rank(Role.BACKUP_OPERATOR),
    }


# --- list -------------------------------------------------------------------------------
@login_required
@require_GET
def vault_list(request):
    params = {
        "q": request.GET.get("q", "").strip(),
        "subscription_id": request.GET.get("subscription", ""),
        "resource_group": request.GET.get("resource_group", ""),
        "location": request.GET.get("location", ""),
        "sort": request.GET.get("sort", "name"),
    }
    try:
        vaults = list(selectors.vault_list(user=request.user, **params))
    except ValidationError:  # a malformed subscription id in the query string
        vaults = []
    visible = access.for_user(request.user, Vault)
    context = {
        "vaults": vaults,
        "params": params,
        "sort": params["sort"],
        "subscriptions": access.for_user(request.user, Subscription),
        "resource_groups": sorted(
            set(visible.values_list("resource_group__name", flat=True)), key=str.lower
        ),
        "locations": sorted(set(visible.values_list("location", flat=True))),
        "total": visible.count(),
        "columns": [
            ("name", "Name"),
            ("resource_group", "Resource group"),
            ("location", "Location"),
            ("subscription", "Subscription"),
            ("state", "Status"),
        ],
    }
    template = "vaults/list.html#results" if request.htmx else "vaults/list.html"
    return render(request, template, context)


# --- create wizard ----------------------------------------------------------------------
def _creatable_subscriptions(user) -> list[Subscription]:
    return list(access.subscriptions_with_role(user, Role.CONTRIBUTOR).order_by("name"))


def _wizard_data(request, subscriptions) -> dict:
    source = request.POST if request.method == "POST" else request.GET
    subscription_id = source.get("subscription") or (
        str(subscriptions[0].pk) if subscriptions else ""
    )
    names = source.getlist("tag_name")
    values = source.getlist("tag_value")
    tag_rows = [(n.strip(), v.strip()) for n, v in zip(names, values, strict=False)]
    return {
        "subscription": subscription_id,
        "resource_group": source.get("resource_group", ""),
        "new_resource_group": source.get("new_resource_group", "").strip(),
        "name": source.get("name", "").strip(),
        "location": source.get("location", settings.HAVEN_REGIONS[0]),
        "tag_rows": [row for row in tag_rows if row[0] or row[1]],
    }


def _basics_errors(user, data, subscriptions) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    subscription = next((s for s in subscriptions if str(s.pk) == data["subscription"]), None)
    if subscription is None:
        errors["subscription"] = ["Choose a subscription where you are a Contributor or Owner."]
    if data["resource_group"] == NEW_RG:
        if not data["new_resource_group"]:
            errors["resource_group"] = ["Enter a name for the new resource group."]
    elif not data["resource_group"]:
        errors["resource_group"] = ["Choose a resource group or create a new one."]
    elif subscription and not _resource_group(subscription, data["resource_group"]):
        errors["resource_group"] = ["That resource group is not in the chosen subscription."]
    errors.update(
        services.vault_create_problems(
            name=data["name"], location=data["location"], subscription=subscription
        )
    )
    return errors


def _resource_group(subscription, rg_id) -> ResourceGroup | None:
    try:
        return ResourceGroup.objects.filter(subscription=subscription, pk=int(rg_id)).first()
    except (TypeError, ValueError):
        return None


@login_required
@require_http_methods(["GET", "POST"])
def vault_create(request):
    subscriptions = _creatable_subscriptions(request.user)
    data = _wizard_data(request, subscriptions)
    step = request.POST.get("step", "basics") if request.method == "POST" else "basics"
    action = request.POST.get("action", "") if request.method == "POST" else ""
    errors: dict[str, list[str]] = {}
    extra_tag_rows = 0
    status = 200
    order = [s for s, _ in WIZARD_STEPS]
    if step not in order:
        # Only a hand-made or damaged form names another step: show Basics again and say so.
        messages.error(request, "The wizard has no such step; check Basics and go on from there.")
        step, action, status = "basics", "", 400

    if action == "add_tag":
        extra_tag_rows = 1
    elif action.startswith("goto:") or action in ("next", "previous", "create"):
        if action == "next":
            target = order[min(order.index(step) + 1, len(order) - 1)]
        elif action == "previous":
            target = order[max(order.index(step) - 1, 0)]
        elif action == "create":
            target = "create"
        else:
            target = action.split(":", 1)[1] if action[5:] in order else step
        # Moving past Basics (or creating) needs valid basics; going back never does.
        if target in ("tags", "review", "create"):
            errors = _basics_errors(request.user, data, subscriptions)
            tag_problems = services.tags_problems(dict(data["tag_rows"]))
            if any(not n for n, _ in data["tag_rows"]):
                tag_problems.insert(0, "Each tag needs a name.")
            if tag_problems and target in ("review", "create"):
                errors["tags"] = tag_problems
                target = "tags"
            if set(errors) - {"tags"}:
                target = "basics"
        if target == "create" and not errors:
            subscription = next(s for s in subscriptions if str(s.pk) == data["subscription"])
            try:
                vault = services.vault_create(
                    subscription=access.subscription_for_user(
                        request.user, subscription.pk, role=Role.CONTRIBUTOR
                    ),
                    resource_group=None
                    if data["resource_group"] == NEW_RG
                    else _resource_group(subscription, data["resource_group"]),
                    new_resource_group_name=data["new_resource_group"]
                    if data["resource_group"] == NEW_RG
                    else "",
                    name=data["name"],
                    location=data["location"],
                    tags=dict(data["tag_rows"]),
                    created_by=request.user,
                )
            except ValidationError as exc:
                errors = exc.message_dict
                target = "tags" if set(errors) == {"tags"} else "basics"
            else:
                return redirect("vaults:deployment", vault.pk)
        step = target if target != "create" else "review"

    subscription = next((s for s in subscriptions if str(s.pk) == data["subscription"]), None)
    resource_groups = list(subscription.resource_groups.all()) if subscription else []
    selected_rg = (
        None
        if data["resource_group"] in ("", NEW_RG)
        else next((rg for rg in resource_groups if str(rg.pk) == data["resource_group"]), None)
    )
    tag_rows = data["tag_rows"] + [("", "")] * (extra_tag_rows + (0 if data["tag_rows"] else 1))
    context = {
        "steps": WIZARD_STEPS,
        "step": step,
        "data": data,
        "errors": errors,
        "subscriptions": subscriptions,
        "subscription": subscription,
        "resource_groups": resource_groups,
        "selected_rg": selected_rg,
        "new_rg": NEW_RG,
        "regions": settings.HAVEN_REGIONS,
        "tag_rows": tag_rows,
        "name_problems": [],
        "redundancy_label": Vault.Redundancy(services.default_redundancy()).label,
        # A newcomer without a subscription creates one here (or learns whom to ask).
        "can_create_subscription": access.can_create_subscriptions(request.user),
        "owners_to_ask": []
        if subscriptions
        else access.owners_to_ask(request.user, role=Role.CONTRIBUTOR),
        "subscription_return_to": RETURN_TO_VAULT_CREATE,
        "subscription_name_rule": SUBSCRIPTION_NAME_RULE,
    }
    return render(request, "vaults/create.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def check_name(request):
    """The live name check under the Name box (htmx), also a full page for completeness."""
    source = request.POST if request.method == "POST" else request.GET
    name = source.get("name", "").strip()
    subscription = None
    with contextlib.suppress(Http404, PermissionDenied):
        subscription = access.subscription_for_user(request.user, source.get("subscription"))
    problems = services.vault_name_problems(name=name, subscription=subscription) if name else []
    return render(
        request,
        "vaults/_name_check.html",
        {"name": name, "problems": problems, "checked": bool(name)},
    )


@login_required
@require_GET
def resource_group_options(request):
    """The resource group picker for the chosen subscription (htmx swap in the wizard)."""
    subscription = None
    with contextlib.suppress(Http404, PermissionDenied):
        subscription = access.subscription_for_user(
            request.user, request.GET.get("subscription"), role=Role.CONTRIBUTOR
        )
    return render(
        request,
        "vaults/_resource_group_field.html",
        {
            "resource_groups": list(subscription.resource_groups.all()) if subscription else [],
            "data": {"resource_group": "", "new_resource_group": ""},
            "new_rg": NEW_RG,
            "errors": {},
        },
    )


# --- deployment -------------------------------------------------------------------------
@login_required
@require_GET
def deployment(request, vault_id):
    vault = access.get_for_user(
        request.user, Vault.objects.select_related("subscription", "resource_group"), pk=vault_id
    )
    context = {"vault": vault, "can_contribute": _can(request.user, vault, Role.CONTRIBUTOR)}
    if request.htmx:
        # The live block fetches itself again when the socket opens (static/js/shell.js).
        return render(request, "vaults/_deployment_status.html", context)
    return render(request, "vaults/deployment.html", context)


@login_required
@require_POST
def deployment_retry(request, vault_id):
    vault = access.get_for_user(request.user, Vault, role=Role.CONTRIBUTOR, pk=vault_id)
    try:
        services.vault_deploy_retry(vault=vault, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("vaults:deployment", vault.pk)


# --- the vault's blade ------------------------------------------------------------------
def _load(request, vault_id, role=Role.READER) -> Vault:
    return access.get_for_user(
        request.user,
        Vault.objects.select_related("subscription", "resource_group", "created_by"),
        role=role,
        pk=vault_id,
    )


@login_required
@require_GET
def overview(request, vault_id):
    vault = _load(request, vault_id)
    now = timezone.now()
    samples = selectors.vault_usage_samples(vault, days=30)
    context = _vault_context(request, vault, "overview")
    context.update(
        {
            "counts": selectors.vault_overview_counts(vault),
            "chart": usage_chart_svg(samples, now=now, days=30),
            "current_usage": selectors.vault_current_usage(vault),
            "has_samples": bool(samples),
            "replication": selectors.vault_replication(vault),
        }
    )
    return render(request, "vaults/overview.html", context)


@login_required
@require_GET
def properties(request, vault_id):
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "properties")
    context["locked_reason"] = selectors.vault_redundancy_locked_reason(vault)
    context["crr_unavailable"] = _crr_unavailable(vault)
    return render(request, "vaults/properties.html", context)


def _crr_unavailable(vault: Vault) -> str:
    if vault.redundancy != Vault.Redundancy.GEO:
        return "Cross Region Restore needs geo-redundant storage."
    return services.redundancy_unavailable_reason(Vault.Redundancy.GEO) or (
        "" if vault.secondary_container else "The vault has no secondary copy."
    )


@login_required
@require_POST
def cross_region_restore(request, vault_id):
    """Properties › Cross Region Restore › Enable (Contributor; cannot be undone)."""
    vault = _load(request, vault_id, role=Role.CONTRIBUTOR)
    if request.POST.get("confirm") != "enable":
        messages.error(request, "Confirm that Cross Region Restore cannot be turned off again.")
        return redirect("vaults:properties", vault.pk)
    try:
        services.vault_cross_region_restore_enable(vault=vault, user=request.user)
    except ValidationError as exc:
        for message in exc.message_dict.get("cross_region_restore", exc.messages):
            messages.error(request, message)
    else:
        messages.success(request, "Cross Region Restore is enabled.")
    return redirect("vaults:properties", vault.pk)


@login_required
@require_http_methods(["GET", "POST"])
def backup_configuration(request, vault_id):
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "properties")
    errors: list[str] = []
    if request.method == "POST":
        activity.require_role(
            request, vault=vault, role=Role.CONTRIBUTOR, operation=Operation.REDUNDANCY_CHANGE
        )
        try:
            services.vault_redundancy_set(
                vault=vault, redundancy=request.POST.get("redundancy", ""), user=request.user
            )
        except ValidationError as exc:
            errors = exc.message_dict.get("redundancy", exc.messages)
        else:
            messages.success(request, "Backup configuration saved.")
            return redirect("vaults:properties", vault.pk)
    vault.refresh_from_db()
    context.update(
        {
            "vault": vault,
            "locked_reason": selectors.vault_redundancy_locked_reason(vault),
            "options": [
                (
                    value,
                    label,
                    services.redundancy_advice(value),
                    ""
                    if vault.redundancy == value
                    else services.redundancy_unavailable_reason(value),
                )
                for value, label in Vault.Redundancy.choices
            ],
            "default_redundancy": services.default_redundancy(),
            "errors": errors,
        }
    )
    return render(request, "vaults/backup_configuration.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def security_settings(request, vault_id):
    """Properties › Security settings: security features and soft delete."""
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "properties")
    errors: dict[str, list[str]] = {}
    values = {
        "security_features": vault.security_features,
        "soft_delete_enabled": vault.soft_delete_enabled,
        "soft_delete_days": vault.soft_delete_days,
        "always_on": vault.soft_delete_always_on,
    }
    status = 200
    if request.method == "POST":
        values = {
            "security_features": request.POST.get("security_features") == "on",
            "soft_delete_enabled": request.POST.get("soft_delete_enabled") == "on",
            "soft_delete_days": request.POST.get("soft_delete_days", "")[:10],
            "always_on": request.POST.get("always_on") == "on",
        }
        before = {
            "security_features": vault.security_features,
            "soft_delete_enabled": vault.soft_delete_enabled,
            "soft_delete_days": vault.soft_delete_days,
            "always_on": vault.soft_delete_always_on,
        }
        fields = {"request": request, "vault": vault, "detail": {"before": before, "asked": values}}
        try:
            with activity.refusals_recorded(
                operation=activity.Operation.SOFT_DELETE_SETTING,
                refused=(PermissionDenied, ValidationError, security_pin.PinRefused),
                **fields,
            ):
                access.check_role(request.user, vault.subscription_id, Role.CONTRIBUTOR)
                services.vault_security_settings_set(
                    vault=vault,
                    user=request.user,
                    pin=request.POST.get("security_pin", ""),
                    **values,
                )
        except ValidationError as exc:
            errors = exc.message_dict
        except security_pin.PinRefused as exc:
            errors = {"security_pin": [str(exc)]}
        else:
            activity.record(operation=activity.Operation.SOFT_DELETE_SETTING, **fields)
            messages.success(request, "Security settings saved.")
            return redirect("vaults:properties", vault.pk)
        status = 400
    context.update(
        {
            "values": values,
            "errors": errors,
            "min_days": services.SOFT_DELETE_MIN_DAYS,
            "max_days": services.SOFT_DELETE_MAX_DAYS,
            "pin_minutes": security_pin.minutes_valid(),
        }
    )
    return render(request, "vaults/security_settings.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def immutable_vault(request, vault_id):
    """Properties › Immutable vault: Disabled, Enabled (reversible), Locked (irreversible)."""
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "properties")
    errors: dict[str, list[str]] = {}
    chosen = vault.immutability
    status = 200
    if request.method == "POST":
        chosen = request.POST.get("immutability", "")[:20]
        activity.require_role(
            request,
            vault=vault,
            role=Role.CONTRIBUTOR,
            operation=Operation.IMMUTABILITY_CHANGE,
        )
        try:
            services.vault_immutability_set(
                vault=vault,
                user=request.user,
                state=chosen,
                confirm=request.POST.get("confirm_name", ""),
                pin=request.POST.get("security_pin", ""),
            )
        except ValidationError as exc:
            errors = exc.message_dict
            status = 400
        else:
            vault.refresh_from_db()
            messages.success(
                request, f"Immutability of {vault.name}: {vault.get_immutability_display()}."
            )
            return redirect("vaults:properties", vault.pk)
    context.update(
        {
            "chosen": chosen,
            "errors": errors,
            "states": Vault.Immutability.choices,
            "pin_minutes": security_pin.minutes_valid(),
        }
    )
    return render(request, "vaults/immutable_vault.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def security_pin_page(request, vault_id):
    """Properties › Security PIN: generate one (Contributor), shown once."""
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "properties")
    context.update({"pin": "", "minutes": security_pin.minutes_valid(), "expires_at": None})
    if request.method == "POST":
        activity.require_role(
            request, vault=vault, role=Role.CONTRIBUTOR, operation=activity.Operation.PIN_GENERATE
        )
        now = timezone.now()
        context["pin"] = security_pin.generate(user=request.user, vault=vault, now=now)
        context["expires_at"] = now + security_pin.VALID_FOR
        activity.record(operation=activity.Operation.PIN_GENERATE, request=request, vault=vault)
    response = render(request, "vaults/security_pin.html", context)
    response["Cache-Control"] = "no-store"
    return response


WORKLOADS = [("on_premises", "On-premises"), ("azure_vm", "Azure VM")]
# What the agent backs up: files and folders, and System State (docs/system-state.md), which
# each machine's policy turns on.
BACKUP_ITEMS = [("files", "Files and folders"), ("system_state", "System State")]


@login_required
@require_GET
def backup_goal(request, vault_id):
    """Getting started › Backup: the backup goal, then Prepare infrastructure."""
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "backup")
    workload = request.GET.get("workload", "on_premises")
    items = [i for i in request.GET.getlist("items") if i in dict(BACKUP_ITEMS)]
    submitted = "prepare" in request.GET
    error = ""
    if submitted and workload not in dict(WORKLOADS):
        error = "Choose where your workload runs."
    elif submitted and not items:
        error = "Choose at least one thing to back up."
    context.update(
        {
            "workloads": WORKLOADS,
            "backup_items": BACKUP_ITEMS,
            "workload": workload,
            "items": items if submitted else ["files"],
            "prepare": submitted and not error,
            "error": error,
            "installer_url": AGENT_INSTALLER_URL,
            "valid_days": VALID_FOR.days,
        }
    )
    return render(request, "vaults/backup_goal.html", context)


# --- credentials ------------------------------------------------------------------------
@login_required
@require_GET
def credentials_list(request, vault_id):
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "credentials")
    now = timezone.now()
    context["credentials"] = [
        (c, c.status(now)) for c in vault.credentials.select_related("issued_by", "revoked_by")
    ]
    context["valid_days"] = VALID_FOR.days
    return render(request, "vaults/credentials.html", context)


@login_required
@require_POST
def credentials_download(request, vault_id):
    vault = _load(request, vault_id)
    activity.require_role(
        request, vault=vault, role=Role.BACKUP_OPERATOR, operation=Operation.CREDENTIALS_DOWNLOAD
    )
    back = request.POST.get("next") or reverse("vaults:backup", args=[vault.pk])
    if not back.startswith("/"):
        back = reverse("vaults:backup", args=[vault.pk])
    if request.POST.get("agent_ready") != "on":
        messages.error(
            request,
            "Confirm that the latest agent is downloaded or installed before downloading "
            "vault credentials.",
        )
        return redirect(back)
    try:
        filename, content, _ = credentials_issue(
            vault=vault,
            issued_by=request.user,
            single_use=request.POST.get("single_use") == "on",
        )
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect(back)
    response = HttpResponse(content, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def credentials_revoke_view(request, vault_id, credential_id):
    vault = _load(request, vault_id)
    credential = VaultCredential.objects.filter(vault=vault, pk=credential_id).first()
    if credential is None:
        raise Http404("No such credentials")
    activity.require_role(
        request,
        vault=vault,
        role=Role.BACKUP_OPERATOR,
        operation=Operation.CREDENTIALS_REVOKE,
        resource=credential_resource(credential),
    )
    credentials_revoke(credential=credential, user=request.user)
    messages.success(request, f"Credentials {str(credential.pk)[:8]} revoked.")
    return redirect("vaults:credentials", vault.pk)


# --- delete -----------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def vault_delete(request, vault_id):
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "overview")
    error = ""
    if request.method == "POST":
        activity.require_role(
            request, vault=vault, role=Role.CONTRIBUTOR, operation=Operation.VAULT_DELETE
        )
        if request.POST.get("confirm_name", "").strip() != vault.name:
            error = f"Type the vault's name, {vault.name}, to confirm."
        else:
            try:
                services.vault_delete(vault=vault, user=request.user)
            except services.VaultDeleteBlocked:
                error = "The vault cannot be deleted yet; see what blocks it below."
            except services.VaultStorageError as exc:
                error = str(exc)
            else:
                messages.success(request, f"Vault {vault.name} was deleted.")
                return redirect("vaults:list")
    context.update({"blockers": selectors.vault_delete_blockers(vault), "error": error})
    return render(request, "vaults/delete.html", context, status=400 if error else 200)


# --- activity log -----------------------------------------------------------------------
# Readers see it; nobody changes it: these views answer GET only (405 to anything else).
@login_required
@require_GET
def activity_log(request, vault_id):
    vault = _load(request, vault_id)
    context = _vault_context(request, vault, "activity")
    context.update(_activity_context(request, selectors.activity_scope(vault_id=vault.pk)))
    context["export_url"] = reverse("vaults:activity-export", args=[vault.pk])
    return render(request, "vaults/activity.html", context)


@login_required
@require_GET
def activity_export(request, vault_id):
    vault = _load(request, vault_id)
    return _activity_csv(
        request, selectors.activity_scope(vault_id=vault.pk), name=f"{vault.name}-activity"
    )


@login_required
@require_GET
def subscription_activity_log(request, subscription_id):
    """The subscription-wide activity log: every vault's entries (deleted vaults' too) and
    the subscription's own (role assignments)."""
    subscription = access.subscription_for_user(request.user, subscription_id)
    context = {
        "subscription": subscription,
        "tab": "activity",
        "is_owner": access.role_in(request.user, subscription.pk) == Role.OWNER,
        "export_url": reverse("vaults:subscription-activity-export", args=[subscription.pk]),
    }
    context.update(
        _activity_context(request, selectors.activity_scope(subscription_id=subscription.pk))
    )
    return render(request, "vaults/subscription_activity.html", context)


@login_required
@require_GET
def subscription_activity_export(request, subscription_id):
    subscription = access.subscription_for_user(request.user, subscription_id)
    return _activity_csv(
        request,
        selectors.activity_scope(subscription_id=subscription.pk),
        name=f"{subscription.name}-activity",
    )


def _activity_context(request, scope) -> dict:
    """The filtered page of entries and the filter choices: four queries, whatever the
    number of rows (the count, the page, the operations and the user names present)."""
    filters = selectors.ActivityFilters.from_query(request.GET)
    page = selectors.activity_page(
        selectors.activity_filtered(scope, filters), request.GET.get("page", 1)
    )
    entries = list(page.object_list)
    for entry in entries:
        entry.lines = activity.detail_lines(entry.detail, entry.operation)
    return {
        "filters": filters,
        "page": page,
        "entries": entries,
        "query": filters.as_query(),
        "operations": selectors.activity_operations(scope),
        "outcomes": activity.Outcome.choices,
        "ranges": [(key, label) for key, (label, _) in selectors.ACTIVITY_RANGES.items()],
        "usernames": selectors.activity_usernames(scope),
    }


class _Line:
    """A file-like object whose write returns the line (csv.writer into a stream)."""

    def write(self, value: str) -> str:
        return value


def _csv_text(rows) -> str:
    writer = csv.writer(_Line())
    return "".join(writer.writerow(row) for row in rows)


def _activity_csv(request, scope, *, name: str) -> StreamingHttpResponse:
    """The filtered entries as CSV, streamed a batch at a time (under ASGI an async
    iterator, which Django sends as it goes; a sync one it would read whole first)."""
    qs = selectors.activity_filtered(scope, selectors.ActivityFilters.from_query(request.GET))
    header = _csv_text([activity.CSV_HEADER])

    def rows():
        yield header
        for batch in selectors.activity_batches(qs):
            yield _csv_text(activity.csv_row(entry) for entry in batch)

    async def async_rows():
        yield header
        after = None
        while batch := await sync_to_async(selectors.activity_batch)(qs, after=after):
            yield _csv_text(activity.csv_row(entry) for entry in batch)
            after = (batch[-1].at, batch[-1].pk)

    content = async_rows() if isinstance(request, ASGIRequest) else rows()
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().astimezone(UTC).strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = content_disposition_header(True, f"{name}-{stamp}.csv")
    response["Cache-Control"] = "no-store"
    return response
