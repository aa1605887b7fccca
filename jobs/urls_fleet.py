from django.urls import path

from jobs import views_fleet as views

app_name = "fleet"

urlpatterns = [
    path("", views.backup_center, name="backup_center"),
    path("machines.csv", views.machines_csv, name="machines_csv"),
    path("alerts.csv", views.alerts_csv, name="alerts_csv"),
    path("alerts/<int:alert_id>/acknowledge/", views.alert_acknowledge, name="alert_acknowledge"),
    path("alerts/<int:alert_id>/close/", views.alert_close, name="alert_close"),
    path("vaults/<uuid:vault_id>/webhooks/", views.vault_webhooks, name="vault_webhooks"),
    path("webhooks/<int:webhook_id>/delete/", views.webhook_delete, name="webhook_delete"),
    path("webhooks/<int:webhook_id>/test/", views.webhook_test, name="webhook_test"),
]
