"""Session login and logout for the people's pages, at /accounts/ (config/urls.py).

Django's own views on our base template; the admin keeps its own login. Both go back to
where the person came from (`next`, checked against the allowed hosts), else home.
"""

from django.contrib.auth import views as auth_views
from django.urls import path

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html", next_page="home"),
        name="login",
    ),
    # POST only (Django's LogoutView): a link or a prefetch cannot log anyone out.
    path("logout/", auth_views.LogoutView.as_view(next_page="home"), name="logout"),
]
