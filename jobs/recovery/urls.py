"""Recover Data: the portal's restore wizard, browsing and searching through the agent."""

from django.urls import path

from jobs.recovery import views

app_name = "recovery"

urlpatterns = [
    path("", views.start, name="start"),
    path("<uuid:source_id>/to/<uuid:target_id>/", views.wizard, name="wizard"),
    path("<uuid:source_id>/to/<uuid:target_id>/times/", views.times, name="times"),
    path("<uuid:source_id>/to/<uuid:target_id>/ask/<str:kind>/", views.ask, name="ask"),
    path("<uuid:source_id>/to/<uuid:target_id>/restore/", views.restore, name="restore"),
    path("<uuid:source_id>/to/<uuid:target_id>/download/", views.download, name="download"),
    path("answers/<str:request_id>/", views.answer, name="answer"),
    path("downloads/<uuid:job_id>/", views.download_status, name="download_status"),
    path("downloads/<uuid:job_id>/file/", views.download_file, name="download_file"),
]
