from django.urls import path

from . import api

urlpatterns = [
    path("", api.EmailCreateView.as_view(), name="emails"),
    path("<int:email_id>/", api.EmailDetailView.as_view(), name="email"),
]
