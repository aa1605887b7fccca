"""The agent API (per-machine tokens): identity, registration, heartbeat, storage grants."""

from django.urls import path

from agents import api_views

app_name = "agent_api"

urlpatterns = [
    path("identity/", api_views.identity, name="identity"),
    path("register/", api_views.register, name="register"),
    path("heartbeat/", api_views.heartbeat, name="heartbeat"),
    path("grant/", api_views.grant, name="grant"),
    path("unregister/", api_views.unregister, name="unregister"),
]
