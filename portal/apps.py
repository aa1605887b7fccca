from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from portal import checks, pools, search, signals  # noqa: F401 - checks registers itself
        from portal.api import schema  # noqa: F401 - registers the API's security schemes

        pools.install_fork_hook()
        search.register_portal_kinds()
        signals.connect()
