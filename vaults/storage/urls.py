app_name = "storage"

urlpatterns: list = []
