"""Portal worker tasks (queue "portal"): thin doors into ``jobs.services``."""

from __future__ import annotations

from celery import shared_task

from agents.models import Machine
from jobs import services


@shared_task(name="jobs.schedule_tick")
def schedule_tick() -> int:
    return len(services.schedule_tick())


@shared_task(name="jobs.verify_tick")
def verify_tick() -> int:
    return len(services.verify_schedule_tick())


@shared_task(name="jobs.sweep")
def sweep() -> dict:
    return services.jobs_sweep()


@shared_task(name="jobs.retention_apply_machine")
def retention_apply_machine(machine_id: str) -> int:
    machine = Machine.objects.select_related("vault").filter(pk=machine_id).first()
    if machine is None:
        return 0
    return len(services.retention_apply(machine=machine))


@shared_task(name="jobs.retention_apply_all")
def retention_apply_all() -> int:
    """Daily: retention for every machine, then a Compact job for each (compaction follows
    retention, which is what leaves chunks dead)."""
    count = services.retention_apply_all()
    services.compact_all()
    return count


@shared_task(name="jobs.alerts_check")
def alerts_check() -> int:
    return services.alerts_check_stale() + services.drills_check_missed()


@shared_task(name="jobs.alerts_digest")
def alerts_digest() -> int:
    return services.alerts_send_digest()


@shared_task(name="jobs.replicate_all")
def replicate_all() -> int:
    return services.replicate_all()


@shared_task(name="jobs.replicate_machine")
def replicate_machine(machine_id: str) -> bool:
    machine = Machine.objects.select_related("vault").filter(pk=machine_id).first()
    if machine is None:
        return False
    return services.replicate_machine(machine=machine) is not None


@shared_task(name="jobs.protection_purge_due")
def protection_purge_due() -> int:
    return services.protection_purge_due()


@shared_task(name="jobs.protection_purge_machine")
def protection_purge_machine(machine_id: str) -> int:
    machine = Machine.objects.select_related("vault").filter(pk=machine_id).first()
    if machine is None:
        return 0
    return int(services.protection_purge(machine=machine) is not None)


@shared_task(name="jobs.passphrase_keys_retire_due")
def passphrase_keys_retire_due() -> int:
    return services.passphrase_keys_retire_due()


@shared_task(name="jobs.seed_import")
def seed_import(job_id: str) -> str:
    from jobs.models import Job

    job = Job.objects.select_related("machine", "vault").filter(pk=job_id).first()
    if job is None:
        return ""
    try:
        return services.seed_import_run(job=job).status
    except services.ImportTakenOver:
        return "taken over"  # a later run of the same import carries it on


@shared_task(name="jobs.webhooks_send")
def webhooks_send(ids: list[int]) -> int:
    """The first try of new alert webhook deliveries, right after their commit."""
    return services.webhooks.webhooks_send(ids=ids)


@shared_task(name="jobs.webhooks_send_due")
def webhooks_send_due() -> dict:
    """Retry the alert webhook deliveries whose backoff has passed."""
    return services.webhooks.webhooks_send_due()
