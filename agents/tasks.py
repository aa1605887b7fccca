"""Portal-side periodic work for machines (thin: each task calls a service)."""

from celery import shared_task
from celery.signals import worker_ready

from agents import broker, dispatch, services


@shared_task(name="agents.broker_users_sync")
def broker_users_sync() -> int:
    return broker.broker_users_sync()


@shared_task(name="agents.outbox_send")
def outbox_send() -> dict:
    """Send the agent messages the broker did not take at once (``agents.dispatch``)."""
    return dispatch.outbox_send()


@worker_ready.connect
def _outbox_at_start(sender=None, **kwargs) -> None:
    """A portal worker starting (after a crash, or with the broker back) empties the
    outbox at once rather than at beat's next tick."""
    from portal.celery import app

    if sender is not None and getattr(sender, "app", None) is app:
        outbox_send.delay()


@shared_task(name="agents.offline_announce")
def offline_announce() -> int:
    """Open Backup centers hear of machines that went Offline (``services``)."""
    return len(services.machines_offline_announce())
