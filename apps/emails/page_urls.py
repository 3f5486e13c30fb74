from django.urls import path

from . import pages

urlpatterns = [
    path("dev/caught/", pages.caught, name="email-dev-caught"),
    path("unsubscribe/<str:token>/", pages.unsubscribe, name="email-unsubscribe"),
]
