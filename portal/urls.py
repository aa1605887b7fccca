"""The URL root: each app mounts its own routes."""

from django.urls import include, path

from portal.views import internal

urlpatterns = [
    path("", include("portal.routes")),
    path("vaults/", include("vaults.urls")),
    path("machines/", include("agents.urls")),
    path("jobs/", include("jobs.urls")),
    path("backup-center/", include("jobs.urls_fleet")),
    path("recover/", include("jobs.recovery.urls")),
    path("api/v1/", include("portal.api.urls")),
    path("api/agent/jobs/", include("jobs.api_urls")),
    path("api/agent/recovery/", include("jobs.recovery.api_urls")),
    path("api/agent/", include("agents.api_urls")),
    path("storage/", include("vaults.storage.urls")),
    path("_internal/realtime/", internal.realtime_relay, name="realtime-relay"),
]

# A database pool that had no connection in time answers 503 with Retry-After, not 500.
handler500 = "portal.concurrency.server_error"
# A URL under /api/v1/ that names no endpoint is answered in JSON, as the API's other errors.
handler404 = "portal.api.errors.not_found"
