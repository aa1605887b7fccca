"""/api/v1/: the REST API for people, its OpenAPI schema and the interactive page."""

from django.urls import path
from drf_spectacular.views import SpectacularSwaggerSplitView

from portal.api import views

app_name = "api"

urlpatterns = [
    path("me/", views.me, name="me"),
    path("subscriptions/", views.SubscriptionList.as_view(), name="subscriptions"),
    path(
        "subscriptions/<uuid:subscription_id>/",
        views.SubscriptionDetail.as_view(),
        name="subscription",
    ),
    path("resource-groups/", views.ResourceGroupList.as_view(), name="resource-groups"),
    path(
        "resource-groups/<int:group_id>/",
        views.ResourceGroupDetail.as_view(),
        name="resource-group",
    ),
    path("vaults/", views.VaultList.as_view(), name="vaults"),
    path("vaults/<uuid:vault_id>/", views.VaultDetail.as_view(), name="vault"),
    path("vaults/<uuid:vault_id>/redundancy/", views.vault_redundancy, name="vault-redundancy"),
    path("machines/", views.MachineList.as_view(), name="machines"),
    path("machines/<uuid:machine_id>/", views.MachineDetail.as_view(), name="machine"),
    path("machines/<uuid:machine_id>/policy/", views.machine_policy, name="machine-policy"),
    path("machines/<uuid:machine_id>/backup/", views.backup_now, name="backup-now"),
    path(
        "machines/<uuid:machine_id>/recovery-points/",
        views.RecoveryPointList.as_view(),
        name="recovery-points",
    ),
    path("machines/<uuid:machine_id>/restore/", views.restore_start, name="restore"),
    path("jobs/", views.JobList.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("alerts/", views.AlertList.as_view(), name="alerts"),
    path("alerts/<int:alert_id>/acknowledge/", views.alert_acknowledge, name="alert-acknowledge"),
    path("alerts/<int:alert_id>/close/", views.alert_close, name="alert-close"),
    path("activity/", views.ActivityList.as_view(), name="activity"),
    path("schema/", views.SchemaView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
]
