"""Mounted by the portal at ``storage/``: ``path("storage/", include("vaults.storage.urls"))``."""

from django.urls import path

from vaults.storage import views

app_name = "storage"

urlpatterns = [
    path("<str:container>/", views.container, name="container"),
    path("<str:container>/<path:name>", views.blob, name="blob"),
]
