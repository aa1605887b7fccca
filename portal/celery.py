"""The portal's Celery app: queue "portal" for provisioning, schedules, retention, alerts."""

import os
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

from portal import embedded_broker  # noqa: F401 - registers the embedded broker's scheme

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# Celery warns at every worker start when it runs as root (a fresh container or VM often
# is). The danger it means is a broker message running code as root: the portal's worker
# accepts JSON only (Celery refuses to start as root at all with pickle accepted) and runs
# the same code with the same rights as the web server beside it, which Celery does not warn
# about. `make run` says once, in its banner, what to do instead (docs/configuration.md,
# "Running as root"), so this warning is not repeated.
warnings.filterwarnings(
    "ignore",
    message="You're running the worker with superuser privileges",
    category=SecurityWarning,
)

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
