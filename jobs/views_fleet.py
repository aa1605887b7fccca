"""The Backup center (every machine and alert the user can see), an alert's Acknowledge and
Close, and a vault's alert webhooks. Thin: the work is in jobs.services.fleet and
jobs.services.webhooks."""

from __future__ import annotations

import csv
import io
from datetime import UTC

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header, url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import replace_url

from jobs.models import Alert, Webhook
from jobs.services import fleet, webhooks
from portal.access import check_role, get_with_role
from portal.models import Role
from vaults import activity
from vaults.activity import Operation
from vaults.models import Vault


def _filters(request, user):
    vaults = fleet.visible_vaults(user)
    filters = fleet.Filters.from_query(request.GET, {str(v.pk) for v in vaults})
    return vaults, filters


@login_required
@require_GET
def backup_center(request):
    vaults, filters = _filters(request, request.user)
    machines = fleet.fleet_machines(request.user, filters)
    alerts = fleet.fleet_alerts(request.user, filters)
    operator_vaults = fleet.vaults_with_role(request.user, vaults, Role.BACKUP_OPERATOR)
    context = {
        "filters": filters,
        "vaults": vaults,
        "states": fleet.MachineState.choices,
        "severities": Alert.Severity.choices,
        "shows": list(fleet.ALERT_SHOW.items()),
        "machines": machines,
        "alerts": alerts,
        "alerts_capped": len(alerts) >= fleet.ALERTS_SHOWN,
        "operator_vaults": operator_vaults,
        "query": filters.query(),
        "query_no_state": filters.query(state=""),
        "next": request.get_full_path(),
        "live_subscriptions": fleet.fleet_subscriptions(request.user),
        "refresh_header": fleet.REFRESH_HEADER,
    }
    template = "jobs/backup_center.html"
    if request.htmx and not request.htmx.history_restore_request:
        template += "#results"
    response = render(request, template, context)
    # A live refresh fetches the filters the form holds; the address says others when the
    # user changed one before the page's scripts ran: it follows what is shown.
    if (
        request.htmx
        and request.headers.get(fleet.REFRESH_HEADER)
        and filters.differ_from(request.htmx.current_url)
    ):
        response = replace_url(response, f"{reverse('fleet:backup_center')}?{filters.query()}")
    return response


@login_required
@require_GET
def machines_csv(request):
    _vaults, filters = _filters(request, request.user)
    rows = fleet.fleet_machines(request.user, filters)["rows"]
    return _csv(fleet.machines_csv_rows(rows), name="backup-center-machines")


@login_required
@require_GET
def alerts_csv(request):
    _vaults, filters = _filters(request, request.user)
    alerts = fleet.fleet_alerts(request.user, filters, limit=None)
    return _csv(fleet.alerts_csv_rows(alerts), name="backup-center-alerts")


def _csv(rows, *, name: str) -> HttpResponse:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().astimezone(UTC).strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = content_disposition_header(True, f"{name}-{stamp}.csv")
    response["Cache-Control"] = "no-store"
    return response


# --- Acknowledge and Close -----------------------------------------------------------------
def _alert_action(request, alert_id, *, operation: str, action) -> HttpResponse:
    alert, _role = get_with_role(
        request.user, Alert.objects.select_related("vault", "machine"), pk=alert_id
    )
    fleet.require_alert_action(request, alert, operation)
    try:
        action(alert=alert, user=request.user)
    except fleet.AlertClosed as exc:
        messages.error(request, str(exc))
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = reverse("fleet:backup_center")
    return redirect(back)


@login_required
@require_POST
def alert_acknowledge(request, alert_id):
    return _alert_action(
        request, alert_id, operation=Operation.ALERT_ACKNOWLEDGE, action=fleet.alert_acknowledge
    )


@login_required
@require_POST
def alert_close(request, alert_id):
    return _alert_action(
        request, alert_id, operation=Operation.ALERT_CLOSE, action=fleet.alert_close
    )


# --- webhooks --------------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def vault_webhooks(request, vault_id):
    vault, role = get_with_role(request.user, Vault, pk=vault_id)
    errors: dict = {}
    form = {"name": "", "url": "", "format": Webhook.Format.GENERIC}
    if request.method == "POST":
        activity.require_role(
            request, vault=vault, role=Role.CONTRIBUTOR, operation=Operation.WEBHOOK_ADD
        )
        form = {k: request.POST.get(k, "") for k in ("name", "url", "format")}
        try:
            hook = webhooks.webhook_add(
                vault=vault, user=request.user, secret=request.POST.get("secret", ""), **form
            )
        except webhooks.WebhookInvalid as exc:
            errors = exc.message_dict
        else:
            messages.success(request, f"Webhook {hook.name} added.")
            return redirect("fleet:vault_webhooks", vault_id=vault.pk)
    hooks = list(Webhook.objects.filter(vault=vault))
    context = {
        "vault": vault,
        "section": "webhooks",
        "webhooks": hooks,
        "deliveries": list(webhooks.webhook_deliveries([h.pk for h in hooks])),
        "formats": Webhook.Format.choices,
        "form": form,
        "errors": errors,
        "can_configure": Role.rank(role) >= Role.rank(Role.CONTRIBUTOR),
        "max_attempts": webhooks.MAX_ATTEMPTS,
    }
    return render(request, "jobs/webhooks.html", context, status=400 if errors else 200)


def _webhook(request, webhook_id, operation: str) -> Webhook:
    hook, _role = get_with_role(
        request.user, Webhook.objects.select_related("vault"), pk=webhook_id
    )
    activity.require_role(
        request, vault=hook.vault, role=Role.CONTRIBUTOR, operation=operation, resource=hook
    )
    return hook


@login_required
@require_POST
def webhook_delete(request, webhook_id):
    hook = _webhook(request, webhook_id, Operation.WEBHOOK_DELETE)
    webhooks.webhook_delete(webhook=hook, user=request.user)
    messages.success(request, f"Webhook {hook.name} deleted.")
    return redirect("fleet:vault_webhooks", vault_id=hook.vault_id)


@login_required
@require_POST
def webhook_test(request, webhook_id):
    hook, _role = get_with_role(
        request.user, Webhook.objects.select_related("vault"), pk=webhook_id
    )
    check_role(request.user, hook.vault.subscription_id, Role.CONTRIBUTOR)
    row = webhooks.webhook_test(webhook=hook, user=request.user)
    if row.delivered_at:
        messages.success(request, f"Test delivered to {hook.name} (HTTP {row.status_code}).")
    else:
        said = row.last_error if row.last_error.endswith(".") else f"{row.last_error}."
        then = "" if row.abandoned_at else " The portal's worker tries again."
        messages.error(request, f"Test to {hook.name} failed: {said}{then}")
    return redirect("fleet:vault_webhooks", vault_id=hook.vault_id)
