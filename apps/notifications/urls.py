from django.urls import path

from . import api

urlpatterns = [
    path("", api.NotificationListView.as_view(), name="notifications"),
    path(
        "<int:notification_id>/read/", api.NotificationReadView.as_view(), name="notification-read"
    ),
    path("read-all/", api.NotificationReadAllView.as_view(), name="notifications-read-all"),
    path("preferences/", api.PreferencesView.as_view(), name="notification-preferences"),
    path("topics/", api.TopicListCreateView.as_view(), name="notification-topics"),
    path(
        "topics/<str:slug>/subscribe/",
        api.TopicSubscribeView.as_view(),
        name="notification-topic-subscribe",
    ),
    path(
        "webpush/subscriptions/",
        api.WebPushSubscriptionView.as_view(),
        name="webpush-subscriptions",
    ),
    path("webpush/vapid-public-key/", api.VapidPublicKeyView.as_view(), name="webpush-vapid-key"),
    path("broadcasts/", api.BroadcastCreateView.as_view(), name="notification-broadcasts"),
    path(
        "broadcasts/<int:broadcast_id>/",
        api.BroadcastDetailView.as_view(),
        name="notification-broadcast",
    ),
]
