from django.urls import path

from . import api

urlpatterns = [
    path("register/", api.RegisterView.as_view(), name="auth-register"),
    path("token/", api.TokenView.as_view(), name="auth-token"),
    path("logout/", api.LogoutView.as_view(), name="auth-logout"),
]
