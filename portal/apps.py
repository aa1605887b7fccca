from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from portal import pools, search, signals

        pools.install_fork_hook()
        search.register_portal_kinds()
        signals.connect()
