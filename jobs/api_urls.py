"""Agent-facing job endpoints (progress, results), mounted under /api/agent/jobs/."""

from django.urls import path  # noqa: F401

app_name = "jobs_api"

urlpatterns: list = []
