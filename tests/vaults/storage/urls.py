"""Only the storage endpoint, mounted where the portal mounts it (portal/urls.py)."""

from django.urls import include, path

urlpatterns = [path("storage/", include("vaults.storage.urls"))]
