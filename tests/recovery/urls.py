"""The portal's URLs plus the agent-facing Recover Data endpoints, mounted as the lead is asked
to mount them in portal/urls.py (``api/agent/recovery/``)."""

from django.urls import include, path

from portal.urls import urlpatterns as portal_urlpatterns

urlpatterns = [
    path("api/agent/recovery/", include("jobs.recovery.api_urls")),
    *portal_urlpatterns,
]
