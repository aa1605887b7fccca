"""Machine pages: all machines, a vault's Protected servers, a machine, rename, unregister,
and the agent installer download.

Roles: Reader sees machines; Contributor renames and unregisters them. Every object is
loaded through ``portal.access``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from agents import installer, selectors, services
from agents.models import OFFLINE_AFTER, Machine
from agents.runtime.version import __version__
from portal import access
from portal.models import Role
from vaults import activity
from vaults.activity import Operation
from vaults.models import Vault


def _at_least(role: str, needed: str) -> bool:
    return Role.rank(role) >= Role.rank(needed)


@login_required
@require_GET
def machine_list(request):
    vault = None
    vault_id = request.GET.get("vault", "")
    if vault_id:
        vault = access.get_for_user(request.user, Vault, pk=vault_id)
    show_all = request.GET.get("show") == "all"
    machines = selectors.machines_for_user(request.user, vault=vault, include_unregistered=show_all)
    return render(
        request,
        "agents/machine_list.html",
        {
            "machines": machines,
            "vault": vault,
            "show_all": show_all,
            "agent_version": __version__,
            "offline_after": int(OFFLINE_AFTER.total_seconds()),
        },
    )


@login_required
@require_GET
def vault_servers(request, vault_id):
    """Backup Infrastructure › Protected servers of one vault."""
    vault, role = access.get_with_role(request.user, Vault, pk=vault_id)
    machines = selectors.machines_for_user(request.user, vault=vault)
    return render(
        request,
        "agents/vault_servers.html",
        {
            "vault": vault,
            "section": "protected_servers",
            "machines": machines,
            "agent_version": __version__,
            "offline_after": int(OFFLINE_AFTER.total_seconds()),
            "can_contribute": _at_least(role, Role.CONTRIBUTOR),
            "can_operate": _at_least(role, Role.BACKUP_OPERATOR),
        },
    )


@login_required
@require_GET
def machine_detail(request, machine_id):
    machine, role = access.get_with_role(
        request.user, Machine.objects.select_related("vault", "vault__subscription"), pk=machine_id
    )
    return render(
        request,
        "agents/machine_detail.html",
        {
            "machine": machine,
            "vault": machine.vault,
            "can_manage": _at_least(role, Role.CONTRIBUTOR),
            "can_operate": _at_least(role, Role.BACKUP_OPERATOR),
            "agent_version": __version__,
            "offline_after": int(OFFLINE_AFTER.total_seconds()),
            "last_backup_at": selectors.last_backup_at(machine),
            **_backup_facts(machine),
        },
    )


def _backup_facts(machine: Machine) -> dict:
    """The policy, last backup job and recovery points the jobs app keeps for the machine
    (through reverse relations, so this page works before the jobs app is installed)."""
    facts: dict = {
        "policy": None,
        "last_job": None,
        "point_count": 0,
        "latest_point": None,
        "protection": None,
        "passphrase_changed_at": None,
        "drill": None,
    }
    if hasattr(machine, "jobs"):
        from jobs.selectors import (
            drill_last_proven,
            drill_latest,
            passphrase_changed_at,
            protection_summary,
        )

        facts["passphrase_changed_at"] = passphrase_changed_at(machine)

        facts["policy"] = getattr(machine, "backup_policy", None)
        facts["protection"] = protection_summary(machine, facts["policy"])
        facts["last_job"] = machine.jobs.filter(operation="backup").order_by("-created_at").first()
        facts["drill"] = {"proven": drill_last_proven(machine), "latest": drill_latest(machine)}
        points = machine.recovery_points.filter(removed_at__isnull=True).order_by("-created_at")
        facts["point_count"] = points.count()
        facts["latest_point"] = points.first()
        # Offline seeding (jobs/seed.html, docs/seeding.md): where it stands.
        policy = facts["policy"]
        imports = list(machine.jobs.filter(operation="import").order_by("-created_at")[:1])
        facts["seeding"] = {
            "policy": policy,
            "imports": imports,
            "imported": machine.jobs.filter(operation="import", status="completed")
            .order_by("-ended_at")
            .first(),
            "waiting": policy is not None
            and policy.initial_backup == "offline"
            and not machine.recovery_points.exists(),
            "written": machine.jobs.filter(
                operation="seed_export", status__in=("completed", "warning")
            )
            .order_by("-ended_at")
            .first(),
        }
        facts["seeding"]["shown"] = bool(
            (policy is not None and policy.initial_backup == "offline") or imports
        )
        from jobs.services import compact_refusal, verify_summary

        facts["verify"] = verify_summary(machine)
        facts["compact_refusal"] = compact_refusal(machine)
    return facts


@login_required
@require_GET
def machine_status(request, machine_id):
    """The status pill alone (htmx refresh and live pushes use the same fragment)."""
    machine = access.get_for_user(request.user, Machine, pk=machine_id)
    return render(request, "agents/_status.html", {"machine": machine})


def _for_change(request, machine_id, operation: str) -> Machine:
    """The machine, for a Contributor; a lower role's POST is refused into the activity log."""
    machine = access.get_for_user(
        request.user, Machine.objects.select_related("vault"), pk=machine_id
    )
    if request.method == "POST":
        activity.require_role(
            request,
            vault=machine.vault,
            role=Role.CONTRIBUTOR,
            operation=operation,
            resource=machine,
        )
    else:
        access.check_role(request.user, machine.vault.subscription_id, Role.CONTRIBUTOR)
    return machine


@login_required
@require_http_methods(["GET", "POST"])
def machine_rename(request, machine_id):
    machine = _for_change(request, machine_id, Operation.MACHINE_RENAME)
    error = ""
    name = machine.name
    if request.method == "POST":
        name = request.POST.get("name", "")
        try:
            services.machine_rename(machine=machine, name=name, user=request.user)
        except services.MachineError as exc:
            error = exc.message
        else:
            messages.success(request, f"Machine renamed to {machine.name}.")
            return redirect("agents:detail", machine.pk)
    return render(
        request,
        "agents/machine_rename.html",
        {"machine": machine, "vault": machine.vault, "name": name, "error": error},
        status=400 if error else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def machine_unregister(request, machine_id):
    machine = _for_change(request, machine_id, Operation.MACHINE_UNREGISTER)
    error = ""
    if machine.unregistered_at is not None:
        messages.info(request, f"{machine.name} is unregistered already.")
        return redirect("agents:detail", machine.pk)
    if request.method == "POST":
        if request.POST.get("confirm_name", "").strip() != machine.name:
            error = f"Type the machine name ({machine.name}) to confirm."
        else:
            try:
                services.machine_unregister(machine=machine, user=request.user)
            except services.MachineError as exc:
                error = exc.message
            else:
                messages.success(
                    request,
                    f"{machine.name} was unregistered: its API token, broker access and storage "
                    "grants no longer work. Its recovery points stay in the vault.",
                )
                return redirect("agents:vault-servers", machine.vault_id)
    return render(
        request,
        "agents/machine_unregister.html",
        {"machine": machine, "vault": machine.vault, "error": error},
        status=400 if error else 200,
    )


@login_required
@require_GET
def agent_installer(request):
    content = installer.build_installer(portal_url=settings.HAVEN_PUBLIC_URL)
    response = HttpResponse(content, content_type="text/x-shellscript; charset=us-ascii")
    response["Content-Disposition"] = f'attachment; filename="{installer.FILENAME}"'
    response["X-Haven-Agent-Version"] = __version__
    return response
