"""System checks for settings that work on one host but not on several (``manage.py check``,
run before ``migrate`` and by ``haven`` commands)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Warning, register


@register("haven")
def generated_secret_with_shared_database(app_configs, **kwargs):
    shared = settings.DATABASE_URL and not settings.DATABASE_URL.startswith("sqlite")
    if not (shared and settings.SECRET_KEY_GENERATED):
        return []
    return [
        Warning(
            "SECRET_KEY is not set, so this portal generated its own in "
            f"{settings.DATA_DIR / 'secret_key'}; a second portal on the same DATABASE_URL "
            "would generate another, and then sign-ins, forms and the stored signing key "
            "work on one portal only.",
            hint="Give every portal and worker the same SECRET_KEY (or SECRET_KEY_FILE): "
            "copy this one, or see docs/configuration.md, 'Running more than one portal'.",
            id="haven.W013",
        )
    ]
