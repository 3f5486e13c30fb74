"""The diagnostic ping API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.core.schema import error_responses

from . import selectors, services
from .models import Ping

MAX_HOLD_MS = 2000


class PingIn(serializers.Serializer):
    message = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    hold_ms = serializers.IntegerField(
        min_value=0, max_value=MAX_HOLD_MS, required=False, default=0
    )


class PingOut(serializers.ModelSerializer):
    class Meta:
        model = Ping
        fields = ["id", "message", "request_id", "created_at", "ponged_at", "pong_request_id"]


class PingAccepted(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    request_id = serializers.CharField()


class PingListCreateView(ListAPIView):
    """A round trip through a worker, to check the whole path (and the request id)."""

    serializer_class = PingOut
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> Any:
        return selectors.ping_list_for_user(user_id=caller_id(self.request))

    @extend_schema(
        request=PingIn,
        responses={
            202: PingAccepted,
            **error_responses(400, 401, 409, 422, extra={409: ["idempotency_key_in_use"]}),
        },
        summary="Accept a ping that a worker answers",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = PingIn(data=request.data)
        data.is_valid(raise_exception=True)
        ping = services.ping_create(owner_id=caller_id(request), **data.validated_data)
        body = {"id": ping.pk, "status": "accepted", "request_id": ping.request_id}
        return Response(body, status=status.HTTP_202_ACCEPTED)


class PingDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: PingOut, **error_responses(401, 404)})
    def get(self, request: Request, ping_id: int) -> Response:
        ping = selectors.ping_get_for_user(ping_id=ping_id, user_id=caller_id(request))
        return Response(PingOut(ping).data)
