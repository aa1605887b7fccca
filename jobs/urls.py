from django.urls import path

from jobs import report_views, views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("reports/", report_views.report_page, name="reports"),
    path("reports/<slug:chart>.csv", report_views.report_csv, name="report_csv"),
    path("<uuid:job_id>/", views.job_detail, name="detail"),
    path("<uuid:job_id>/cancel/", views.job_cancel, name="cancel"),
    path("machines/<uuid:machine_id>/policy/", views.policy_edit, name="policy"),
    path("machines/<uuid:machine_id>/policy/preview/", views.policy_preview, name="policy_preview"),
    path("machines/<uuid:machine_id>/properties/throttling/", views.throttling, name="throttling"),
    path(
        "machines/<uuid:machine_id>/properties/throttling/preview/",
        views.throttling_preview,
        name="throttling_preview",
    ),
    path("machines/<uuid:machine_id>/backup-now/", views.backup_now, name="backup_now"),
    path("machines/<uuid:machine_id>/verify-now/", views.verify_now, name="verify_now"),
    path("machines/<uuid:machine_id>/compact/", views.compact_now, name="compact_now"),
    path("machines/<uuid:machine_id>/seeding/", views.seed, name="seed"),
    path("machines/<uuid:machine_id>/drill/", views.drill_run, name="drill_run"),
    path(
        "machines/<uuid:machine_id>/recovery-points/",
        views.recovery_points,
        name="recovery_points",
    ),
    path(
        "machines/<uuid:machine_id>/protection/stop/",
        views.protection_stop,
        name="protection_stop",
    ),
    path(
        "machines/<uuid:machine_id>/protection/resume/",
        views.protection_resume,
        name="protection_resume",
    ),
    path(
        "machines/<uuid:machine_id>/protection/undelete/",
        views.protection_undelete,
        name="protection_undelete",
    ),
    path("vaults/<uuid:vault_id>/backup-items/", views.backup_items, name="backup_items"),
    path("vaults/<uuid:vault_id>/alerts/", views.vault_alerts, name="vault_alerts"),
]
