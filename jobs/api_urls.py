"""Agent-facing job endpoints (progress, results), mounted under /api/agent/jobs/."""

from django.urls import path

from jobs import api_views

app_name = "jobs_api"

urlpatterns = [
    path("policy/", api_views.policy_detail, name="policy"),
    path("policy/applied/", api_views.policy_applied, name="policy_applied"),
    path("passphrase/", api_views.passphrase_authorize, name="passphrase_authorize"),
    path(
        "passphrase/<uuid:change_id>/complete/",
        api_views.passphrase_complete,
        name="passphrase_complete",
    ),
    path("backup/", api_views.backup_now, name="backup_now"),
    path("<uuid:job_id>/", api_views.job_detail, name="detail"),
    path("<uuid:job_id>/start/", api_views.job_start, name="start"),
    path("<uuid:job_id>/progress/", api_views.job_progress, name="progress"),
    path("<uuid:job_id>/result/", api_views.job_result, name="result"),
]
