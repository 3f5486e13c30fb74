from django.urls import path

from . import api

urlpatterns = [
    path("rooms/", api.RoomListCreateView.as_view(), name="chat-rooms"),
    path("rooms/<int:room_id>/join/", api.RoomJoinView.as_view(), name="chat-room-join"),
    path("rooms/<int:room_id>/leave/", api.RoomLeaveView.as_view(), name="chat-room-leave"),
    path("rooms/<int:room_id>/members/", api.RoomMembersView.as_view(), name="chat-room-members"),
    path(
        "rooms/<int:room_id>/messages/", api.RoomMessagesView.as_view(), name="chat-room-messages"
    ),
]
