from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self):
        from agents.dispatch import OUTBOX_SECONDS
        from agents.services import OFFLINE_SWEEP_SECONDS
        from portal import live, search
        from portal.celery import register_periodic

        live.register("machine", _machine_group)
        search.register("machine", find_machines, label="Machines", order=40)
        # Redis without an ACL file forgets the machines' users when it restarts.
        register_periodic("agents.broker_users_sync", "agents.broker_users_sync", 120)
        # Agent messages the broker did not take when they were made (agents.dispatch).
        register_periodic("agents.outbox_send", "agents.outbox_send", OUTBOX_SECONDS)
        # A machine going Offline is only missed heartbeats: open Backup centers hear of it.
        register_periodic(
            "agents.offline_announce", "agents.offline_announce", OFFLINE_SWEEP_SECONDS
        )


def _machine_group(user, machine_id: str) -> str | None:
    """Pages may watch a machine they can read (``?watch=machine:<id>``)."""
    from agents.models import Machine
    from portal.access import get_for_user

    machine = get_for_user(user, Machine, pk=machine_id)
    return f"machine.{machine.pk}"


def find_machines(user, query: str, limit: int, *, newest_first: bool = False):
    """Registered machines for global search, All resources and Home (portal.search)."""
    from django.db.models import Q
    from django.urls import reverse

    from agents.models import Machine
    from portal import access, search

    qs = (
        access.for_user(user, Machine)
        .filter(unregistered_at__isnull=True)
        .select_related("vault", "vault__subscription", "vault__resource_group")
    )
    if query:
        qs = qs.filter(Q(name__icontains=query) | Q(hostname__icontains=query))
    qs = qs.order_by("-registered_at", "name") if newest_first else qs.order_by("name")
    return [
        search.Resource(
            kind="machine",
            type_label="Machine",
            name=m.name,
            url=reverse("agents:detail", args=[m.pk]),
            subscription=m.vault.subscription.name,
            resource_group=m.vault.resource_group.name,
            location=m.vault.location,
            created_at=m.registered_at,
            extra={"vault": m.vault.name},
        )
        for m in qs[:limit]
    ]
