"""The portal's Celery app: queue "portal" for provisioning, schedules, retention, alerts."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("haven")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.conf.beat_schedule = {}


def register_periodic(name: str, task: str, seconds: float) -> None:
    """Apps add their periodic tasks here (see jobs/ and vaults/ ``apps.py``)."""
    app.conf.beat_schedule[name] = {
        "task": task,
        "schedule": seconds,
        "options": {"queue": "portal"},
    }
