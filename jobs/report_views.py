"""Reports: charts of job outcomes, backup duration and data, and storage over time, each
with a table view and a CSV export, over the vaults the user may read."""

from __future__ import annotations

import csv

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from agents.models import Machine
from jobs import reports
from jobs.report_svg import chart_svg, format_value
from portal.access import for_user
from vaults.models import Vault

UNIT_HEADER = {"count": "jobs", "bytes": "bytes", "seconds": "seconds"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A name as a CSV cell a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return f"'{text}" if text.startswith(FORMULA_START) else text


class ReportFilters(forms.Form):
    period = forms.TypedChoiceField(
        choices=[(str(d), f"{d} days") for d in reports.PERIODS],
        coerce=int,
        required=False,
        empty_value=reports.PERIODS[0],
    )
    vault = forms.UUIDField(required=False)
    machine = forms.UUIDField(required=False)


def _scope(request) -> tuple[reports.Scope | None, ReportFilters, Vault | None, list]:
    """The report's scope from the query string, limited to the vaults the user may read.
    A vault or machine the user may not see is a 404, exactly like one that does not exist."""
    form = ReportFilters(request.GET)
    vaults = for_user(request.user, Vault).order_by("name")
    if not form.is_valid():
        return None, form, None, []
    vault = None
    if form.cleaned_data["vault"]:
        vault = vaults.filter(pk=form.cleaned_data["vault"]).first()
        if vault is None:
            raise Http404("No such vault")
        vaults = vaults.filter(pk=vault.pk)
    vault_ids = list(vaults.values_list("pk", flat=True))
    machines = list(
        Machine.objects.filter(vault_id__in=vault_ids).order_by("name").values("pk", "name")
    )
    machine_id = form.cleaned_data["machine"]
    if machine_id and machine_id not in {m["pk"] for m in machines}:
        raise Http404("No such machine")
    scope = reports.Scope(
        vault_ids=vault_ids,
        days=form.cleaned_data["period"],
        tz=timezone.get_current_timezone(),
        now=timezone.now(),
        machine_id=machine_id,
    )
    return scope, form, vault, machines


def _query(form: ReportFilters, **override) -> str:
    data = {k: form.cleaned_data.get(k) or "" for k in ("period", "vault", "machine")}
    data.update(override)
    return "&".join(f"{k}={v}" for k, v in data.items() if v)


@login_required
@require_GET
def report_page(request):
    scope, form, vault, machines = _scope(request)
    if scope is None:
        return render(
            request,
            "jobs/reports.html",
            {"form": form, "nav_area": "reports", "vault": None},
            status=400,
        )
    report = reports.report(scope)
    zone_name = timezone.get_current_timezone_name()
    charts = [
        {
            "chart": chart,
            "svg": chart_svg(chart, zone_name=zone_name) if chart.has_data else None,
            "rows": [
                (day, [format_value(v, chart.unit) for v in values])
                for day, *values in chart.rows()
            ],
        }
        for chart in report.charts
    ]
    return render(
        request,
        "jobs/reports.html",
        {
            "form": form,
            "report": report,
            "charts": charts,
            "vault": vault,
            "machines": machines,
            "vaults": for_user(request.user, Vault).order_by("name").values("pk", "name"),
            "periods": reports.PERIODS,
            "query": _query(form),
            "period_queries": [(d, _query(form, period=d)) for d in reports.PERIODS],
            "zone_name": zone_name,
            "nav_area": "reports",
            "section": "reports",
        },
    )


@login_required
@require_GET
def report_csv(request, chart: str):
    scope, form, _, _ = _scope(request)
    if scope is None:
        errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    found = reports.report(scope).chart(chart)
    if found is None:
        raise Http404("No such chart")
    today = timezone.localdate()
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="haven-{found.slug}-{scope.days}d-{today:%Y-%m-%d}.csv"'
    )
    writer = csv.writer(response)
    unit = UNIT_HEADER[found.unit]
    writer.writerow(["day", *(_cell(f"{s.name} ({unit})") for s in found.series)])
    for day, *values in found.rows():
        writer.writerow([day.isoformat(), *values])
    return response
