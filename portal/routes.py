from django.urls import path

from portal.views import auth, home

app_name = "portal"

urlpatterns = [
    path("", home.home, name="home"),
    path("signin/", auth.signin, name="login"),
    path("signout/", auth.signout, name="logout"),
]
