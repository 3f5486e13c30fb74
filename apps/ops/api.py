"""The diagnostic ping API and the bench's baseline endpoints."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
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


# --- Baselines for bench/: each does as little as its layer allows ------------------------


@csrf_exempt
def plain_noop(request: HttpRequest) -> JsonResponse:
    """Plain Django: no DRF, no auth."""
    return JsonResponse({"ok": True})


class _NoSchema(APIView):
    schema = None  # bench plumbing, kept out of the public API document


class AnonymousNoopView(_NoSchema):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        return Response({"ok": True})


class AuthenticatedNoopView(_NoSchema):
    """The API's real authentication, and nothing else."""

    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"ok": True, "user": request.user.pk})


class StockTokenAuthNoopView(_NoSchema):
    """DRF's own TokenAuthentication (a query per request), for comparison only."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"ok": True, "user": request.user.pk})


class OneQueryView(_NoSchema):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        exists = get_user_model().objects.filter(pk=1).exists()
        return Response({"ok": exists})
