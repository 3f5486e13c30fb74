"""Notifications over HTTP: the inbox, read marks, preferences, topics, Web Push
subscriptions and broadcasts (the contract: /work/shared/API.md "Notifications: push")."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny, IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.core.pagination import SurgeCursorPagination
from apps.core.schema import error_responses

from . import selectors, services
from .models import Broadcast, Notification, Topic


class NotificationOut(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "url", "read_at", "created_at", "request_id"]


class TopicOut(serializers.ModelSerializer):
    subscribed = serializers.BooleanField(read_only=True, default=False)

    class Meta:
        model = Topic
        fields = ["slug", "name", "created_at", "subscribed"]


class TopicIn(serializers.Serializer):
    slug = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class KeysIn(serializers.Serializer):
    p256dh = serializers.CharField(max_length=128)
    auth = serializers.CharField(max_length=64)


class SubscriptionIn(serializers.Serializer):
    endpoint = serializers.CharField(max_length=2048)
    keys = KeysIn()


class SubscriptionGoneIn(serializers.Serializer):
    endpoint = serializers.CharField(max_length=2048)


class SubscriptionOut(serializers.Serializer):
    endpoint = serializers.CharField()
    created_at = serializers.DateTimeField()


class BroadcastIn(serializers.Serializer):
    topic = serializers.CharField(max_length=64)
    title = serializers.CharField(max_length=200)
    body = serializers.CharField(required=False, allow_blank=True, default="")
    url = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class BroadcastOut(serializers.ModelSerializer):
    class Meta:
        model = Broadcast
        fields = ["id", "status", "recipients", "delivered", "failed"]


class InboxPagination(SurgeCursorPagination):
    """Newest first; the page also says how many are unread."""

    ordering = "-id"
    unread_count = 0

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        response.data["unread_count"] = self.unread_count
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        answer = super().get_paginated_response_schema(schema)
        answer["required"].append("unread_count")
        answer["properties"]["unread_count"] = {"type": "integer"}
        return answer


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class NotificationListView(ListAPIView):
    """The caller's inbox newest first (`?unread=true`: unread only), or with
    `?after_id=N` every notification after N, oldest first (catch-up after a disconnect)."""

    serializer_class = NotificationOut
    pagination_class = InboxPagination
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> Any:
        return selectors.notification_list(
            user_id=caller_id(self.request), unread=_flag(self.request.query_params.get("unread"))
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("unread", bool, required=False),
            OpenApiParameter("after_id", int, required=False),
        ],
        responses={200: NotificationOut(many=True), **error_responses(400, 401)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        user_id = caller_id(request)
        after = request.query_params.get("after_id")
        count = selectors.unread_count(user_id=user_id)
        if after is None:
            assert isinstance(self.paginator, InboxPagination)
            self.paginator.unread_count = count
            return super().get(request, *args, **kwargs)
        if not after.isdigit() or len(after) > 18:
            raise serializers.ValidationError({"after_id": ["A non-negative integer."]})
        rows = selectors.notifications_after(user_id=user_id, after_id=int(after))
        next_url = None
        if len(rows) == selectors.AFTER_ID_PAGE:
            next_url = request.build_absolute_uri(
                f"{request.path}?{urlencode({'after_id': rows[-1].pk})}"
            )
        return Response(
            {
                "results": NotificationOut(rows, many=True).data,
                "next": next_url,
                "unread_count": count,
            }
        )


class NotificationReadView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: NotificationOut, **error_responses(401, 404)})
    def post(self, request: Request, notification_id: int) -> Response:
        notification = services.notification_mark_read(
            notification_id=notification_id, user_id=caller_id(request)
        )
        return Response(NotificationOut(notification).data)


class NotificationReadAllView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: None, **error_responses(401)})
    def post(self, request: Request) -> Response:
        marked = services.notifications_mark_all_read(user_id=caller_id(request))
        return Response({"marked": marked, "unread_count": 0})


class PreferencesView(APIView):
    """`{<kind>: {in_app, web_push, email}}`; critical kinds ignore what is stored."""

    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response(selectors.preferences_get(user_id=caller_id(request)))

    @extend_schema(request=None, responses={200: None, **error_responses(400, 401)})
    def put(self, request: Request) -> Response:
        user_id = caller_id(request)
        services.preferences_set(user_id=user_id, changes=request.data)
        return Response(selectors.preferences_get(user_id=user_id))


class TopicPagination(SurgeCursorPagination):
    ordering = "slug"


class TopicListCreateView(ListAPIView):
    """Every topic (with whether the caller is subscribed); POST (staff) creates one."""

    serializer_class = TopicOut
    pagination_class = TopicPagination
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> Any:
        return selectors.topic_list(user_id=caller_id(self.request))

    @extend_schema(request=TopicIn, responses={201: TopicOut, **error_responses(400, 401, 403)})
    @idempotent
    def post(self, request: Request) -> Response:
        if not request.user.is_staff:
            self.permission_denied(request)
        data = TopicIn(data=request.data)
        data.is_valid(raise_exception=True)
        topic = services.topic_create(
            slug=data.validated_data["slug"], name=data.validated_data["name"]
        )
        return Response(TopicOut(topic).data, status=status.HTTP_201_CREATED)


class TopicSubscribeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: None, **error_responses(400, 401)})
    def post(self, request: Request, slug: str) -> Response:
        topic = services.topic_subscribe(user_id=caller_id(request), slug=slug)
        return Response({"topic": topic.slug, "subscribed": True})

    @extend_schema(request=None, responses={200: None, **error_responses(400, 401)})
    def delete(self, request: Request, slug: str) -> Response:
        services.topic_unsubscribe(user_id=caller_id(request), slug=slug)
        return Response({"topic": slug, "subscribed": False})


class WebPushSubscriptionView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=SubscriptionIn,
        responses={
            201: SubscriptionOut,
            200: SubscriptionOut,
            **error_responses(400, 401, extra={400: ["endpoint_not_allowed"]}),
        },
    )
    def post(self, request: Request) -> Response:
        data = SubscriptionIn(data=request.data)
        data.is_valid(raise_exception=True)
        subscription, created = services.webpush_subscription_register(
            user_id=caller_id(request),
            endpoint=data.validated_data["endpoint"],
            p256dh=data.validated_data["keys"]["p256dh"],
            auth=data.validated_data["keys"]["auth"],
            user_agent=request.headers.get("User-Agent", ""),
        )
        return Response(
            SubscriptionOut(subscription).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(request=SubscriptionGoneIn, responses={204: None, **error_responses(400, 401)})
    def delete(self, request: Request) -> Response:
        data = SubscriptionGoneIn(data=request.data)
        data.is_valid(raise_exception=True)
        services.webpush_subscription_unregister(
            user_id=caller_id(request), endpoint=data.validated_data["endpoint"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class VapidPublicKeyView(APIView):
    """The key browsers pass as `applicationServerKey` (public by nature)."""

    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response({"key": settings.VAPID_PUBLIC_KEY})


class BroadcastCreateView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=BroadcastIn,
        responses={202: None, **error_responses(400, 401, 403, 404, 409, 422)},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = BroadcastIn(data=request.data)
        data.is_valid(raise_exception=True)
        broadcast = services.broadcast_create(
            topic_slug=data.validated_data["topic"],
            title=data.validated_data["title"],
            body=data.validated_data["body"],
            url=data.validated_data["url"],
            created_by_id=caller_id(request),
        )
        return Response({"id": broadcast.pk}, status=status.HTTP_202_ACCEPTED)


class BroadcastDetailView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: BroadcastOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, broadcast_id: int) -> Response:
        return Response(BroadcastOut(selectors.broadcast_get(broadcast_id=broadcast_id)).data)
