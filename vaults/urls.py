from django.urls import path

from vaults import views

app_name = "vaults"

urlpatterns = [
    path("", views.vault_list, name="list"),
    path("create/", views.vault_create, name="create"),
    path("create/check-name/", views.check_name, name="check-name"),
    path("create/resource-groups/", views.resource_group_options, name="resource-groups"),
    path("<uuid:vault_id>/", views.overview, name="overview"),
    path("<uuid:vault_id>/deployment/", views.deployment, name="deployment"),
    path("<uuid:vault_id>/deployment/retry/", views.deployment_retry, name="retry"),
    path("<uuid:vault_id>/properties/", views.properties, name="properties"),
    path(
        "<uuid:vault_id>/properties/backup-configuration/",
        views.backup_configuration,
        name="backup-configuration",
    ),
    path(
        "<uuid:vault_id>/properties/cross-region-restore/",
        views.cross_region_restore,
        name="cross-region-restore",
    ),
    path(
        "<uuid:vault_id>/properties/security-settings/",
        views.security_settings,
        name="security-settings",
    ),
    path("<uuid:vault_id>/properties/security-pin/", views.security_pin_page, name="security-pin"),
    path(
        "<uuid:vault_id>/properties/immutable-vault/",
        views.immutable_vault,
        name="immutable-vault",
    ),
    path("<uuid:vault_id>/backup/", views.backup_goal, name="backup"),
    path("<uuid:vault_id>/credentials/", views.credentials_list, name="credentials"),
    path(
        "<uuid:vault_id>/credentials/download/",
        views.credentials_download,
        name="credentials-download",
    ),
    path(
        "<uuid:vault_id>/credentials/<uuid:credential_id>/revoke/",
        views.credentials_revoke_view,
        name="credentials-revoke",
    ),
    path("<uuid:vault_id>/delete/", views.vault_delete, name="delete"),
    path("<uuid:vault_id>/activity/", views.activity_log, name="activity"),
    path("<uuid:vault_id>/activity/export/", views.activity_export, name="activity-export"),
    path(
        "activity/subscription/<uuid:subscription_id>/",
        views.subscription_activity_log,
        name="subscription-activity",
    ),
    path(
        "activity/subscription/<uuid:subscription_id>/export/",
        views.subscription_activity_export,
        name="subscription-activity-export",
    ),
]
