from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from portal import checks, pools, search, signals  # noqa: F401 - checks registers itself

        pools.install_fork_hook()
        search.register_portal_kinds()
        signals.connect()
