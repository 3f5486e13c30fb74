"""Chat over HTTP: rooms, membership, members and history (the contract: API.md "Chat").
Live messages go over the WebSocket (consumers.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.core.pagination import SurgeCursorPagination
from apps.core.schema import error_responses

from . import selectors, services
from .models import Membership, Room


class RoomIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class RoomOut(serializers.ModelSerializer):
    class Meta:
        model = Room
        fields = ["id", "name", "last_seq", "created_at"]


class MyRoomOut(serializers.Serializer):
    """One of the caller's rooms, from its membership."""

    id = serializers.IntegerField(source="room.id")
    name = serializers.CharField(source="room.name")
    last_seq = serializers.IntegerField(source="room.last_seq")
    last_read_seq = serializers.IntegerField()
    unread = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(source="room.created_at")

    def get_unread(self, membership: Membership) -> int:
        return max(0, membership.room.last_seq - membership.last_read_seq)


class MemberOut(serializers.Serializer):
    id = serializers.IntegerField(source="user.id")
    username = serializers.CharField(source="user.username")
    last_read_seq = serializers.IntegerField()


class IdPagination(SurgeCursorPagination):
    ordering = "id"


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _room_or_404(*, room_id: int, user_id: int) -> Room:
    try:
        return selectors.room_get_for_user(room_id=room_id, user_id=user_id)
    except Room.DoesNotExist:
        raise NotFound() from None


class RoomListCreateView(ListAPIView):
    """The caller's rooms with `unread`, or (`?discover=true`) the rooms it may join;
    POST creates a room with the caller as its first member."""

    permission_classes = [IsAuthenticated]
    pagination_class = IdPagination

    def discover(self) -> bool:
        return _flag(self.request.query_params.get("discover"))

    def get_serializer_class(self) -> Any:
        return RoomOut if self.discover() else MyRoomOut

    def get_queryset(self) -> Any:
        user_id = caller_id(self.request)
        if self.discover():
            return selectors.room_list_discoverable(user_id=user_id)
        return selectors.membership_list_for_user(user_id=user_id)

    @extend_schema(
        parameters=[OpenApiParameter("discover", bool, required=False)],
        responses={200: MyRoomOut(many=True), **error_responses(401)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=RoomIn, responses={201: RoomOut, **error_responses(400, 401)})
    @idempotent
    def post(self, request: Request) -> Response:
        data = RoomIn(data=request.data)
        data.is_valid(raise_exception=True)
        room = services.room_create(name=data.validated_data["name"], user_id=caller_id(request))
        return Response(RoomOut(room).data, status=status.HTTP_201_CREATED)


class RoomJoinView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: RoomOut, **error_responses(401, 404)})
    def post(self, request: Request, room_id: int) -> Response:
        try:
            room = services.room_join(room_id=room_id, user_id=caller_id(request))
        except Room.DoesNotExist:
            raise NotFound() from None
        return Response(RoomOut(room).data)


class RoomLeaveView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: RoomOut, **error_responses(401, 404)})
    def post(self, request: Request, room_id: int) -> Response:
        try:
            room = services.room_leave(room_id=room_id, user_id=caller_id(request))
        except Room.DoesNotExist:
            raise NotFound() from None
        return Response(RoomOut(room).data)


class RoomMembersView(ListAPIView):
    """The room's members (members only: another room is 404)."""

    permission_classes = [IsAuthenticated]
    pagination_class = IdPagination
    serializer_class = MemberOut

    def get_queryset(self) -> Any:
        room = _room_or_404(room_id=self.kwargs["room_id"], user_id=caller_id(self.request))
        return selectors.member_list(room_id=room.pk)


class MessageOut(serializers.Serializer):
    """The message frame's fields (selectors.message_frame), without `type`."""

    room = serializers.IntegerField()
    seq = serializers.IntegerField()
    id = serializers.IntegerField()
    sender = serializers.DictField()
    body = serializers.CharField()
    client_msg_id = serializers.CharField()
    created_at = serializers.CharField()
    deleted = serializers.BooleanField()


def _seq_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise serializers.ValidationError({name: ["A non-negative integer."]})
    return int(value)


class RoomMessagesView(APIView):
    """History ascending by seq: `?after_seq=N` the page after N, `?before_seq=N` the page
    before N; `limit` (1-200, default 50). `next` continues in the same direction."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("after_seq", int, required=False),
            OpenApiParameter("before_seq", int, required=False),
            OpenApiParameter("limit", int, required=False),
        ],
        responses={200: MessageOut(many=True), **error_responses(400, 401, 404)},
    )
    def get(self, request: Request, room_id: int) -> Response:
        room = _room_or_404(room_id=room_id, user_id=caller_id(request))
        after_seq = _seq_param(request, "after_seq")
        before_seq = _seq_param(request, "before_seq")
        limit = _seq_param(request, "limit") or 50
        if limit > selectors.PAGE_MAX:
            raise serializers.ValidationError({"limit": [f"At most {selectors.PAGE_MAX}."]})
        rows = selectors.message_list(
            room_id=room.pk, after_seq=after_seq, before_seq=before_seq, limit=limit
        )
        next_url = None
        if len(rows) == limit:
            query: dict[str, int] = {"limit": limit}
            if before_seq is not None:
                query["before_seq"] = rows[0].seq
                if after_seq is not None:
                    query["after_seq"] = after_seq
            else:
                query["after_seq"] = rows[-1].seq
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(query)}")
        results = [selectors.message_frame(m) for m in rows]
        return Response({"results": results, "next": next_url})
