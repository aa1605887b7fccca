"""Portal-side periodic work for machines (thin: each task calls a service)."""

from celery import shared_task

from agents import broker


@shared_task(name="agents.broker_users_sync")
def broker_users_sync() -> int:
    return broker.broker_users_sync()
