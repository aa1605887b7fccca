from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from portal import checks, search, signals  # noqa: F401 - checks registers itself

        search.register_portal_kinds()
        signals.connect()
