"""Agent-facing Recover Data endpoints, mounted under /api/agent/recovery/."""

from django.urls import path

from jobs.recovery import api_views

app_name = "recovery_api"

urlpatterns = [
    path("grant/", api_views.grant, name="grant"),
    path("answers/<str:request_id>/", api_views.answer, name="answer"),
    path("downloads/<uuid:job_id>/", api_views.download, name="download"),
]
