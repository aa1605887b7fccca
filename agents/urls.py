"""Machine pages (/machines/) and the agent installer download."""

from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [
    path("", views.machine_list, name="list"),
    path("agent/installer/", views.agent_installer, name="installer"),
    path("vault/<uuid:vault_id>/", views.vault_servers, name="vault-servers"),
    path("<uuid:machine_id>/", views.machine_detail, name="detail"),
    path("<uuid:machine_id>/status/", views.machine_status, name="status"),
    path("<uuid:machine_id>/rename/", views.machine_rename, name="rename"),
    path("<uuid:machine_id>/unregister/", views.machine_unregister, name="unregister"),
]
