"""The portal: settings, ASGI and Celery apps, the URL root, the shell (top bar, left
navigation, breadcrumbs, notifications, search), subscriptions, resource groups, users and
roles.
"""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
