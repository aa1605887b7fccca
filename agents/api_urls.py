"""The agent API (per-machine tokens): registration, heartbeat, progress, results."""

from django.urls import path  # noqa: F401

app_name = "agent_api"

urlpatterns: list = []
