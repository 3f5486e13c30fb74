"""Registration, tokens and logout."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from apps.core.api import caller_id
from apps.core.idempotency import idempotent
from apps.core.schema import error_responses

from . import services


class RegisterIn(serializers.Serializer):
    username = serializers.RegexField(
        r"^[\w.@+-]+\Z",
        max_length=150,
        error_messages={"invalid": "Letters, digits and @.+-_ only."},
    )
    password = serializers.CharField(max_length=128, trim_whitespace=False)
    email = serializers.EmailField(required=False, allow_blank=True, default="")


class RegisterOut(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    token = serializers.CharField()


class TokenIn(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class TokenOut(serializers.Serializer):
    token = serializers.CharField()


class _AnonymousAuthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"


class RegisterView(_AnonymousAuthView):
    @extend_schema(
        request=RegisterIn,
        responses={201: RegisterOut, **error_responses(400, 429, extra={400: ["username_taken"]})},
        summary="Create an account and its API token",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = RegisterIn(data=request.data)
        data.is_valid(raise_exception=True)
        registered = services.user_register(**data.validated_data)
        body = {
            "id": registered.user_id,
            "username": registered.username,
            "token": registered.token,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class TokenView(_AnonymousAuthView):
    @extend_schema(
        request=TokenIn,
        responses={
            200: TokenOut,
            **error_responses(400, 429, extra={400: ["invalid_credentials"]}),
        },
        summary="Exchange username and password for the API token",
    )
    def post(self, request: Request) -> Response:
        data = TokenIn(data=request.data)
        data.is_valid(raise_exception=True)
        return Response({"token": services.token_obtain(**data.validated_data)})


class LogoutView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=None,
        responses={204: None, **error_responses(401)},
        summary="Revoke the caller's token (effective everywhere within seconds)",
    )
    def post(self, request: Request) -> Response:
        services.token_revoke(user_id=caller_id(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
