from django.urls import path

from . import api

urlpatterns = [
    path("pings/", api.PingListCreateView.as_view(), name="ops-pings"),
    path("pings/<int:ping_id>/", api.PingDetailView.as_view(), name="ops-ping"),
]
