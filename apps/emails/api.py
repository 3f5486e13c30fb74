"""Emails over HTTP: staff queue a mail (202, a worker sends it) and read its status."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.schema import error_responses

from . import selectors, services
from .models import Email, Priority


class EmailIn(serializers.Serializer):
    # Not trimmed and not EmailField: the service checks the address as given (CR/LF
    # included), the one place every caller's addresses pass.
    to = serializers.CharField(trim_whitespace=False, max_length=1000)
    template = serializers.CharField(max_length=100)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)

    def get_fields(self) -> dict[str, serializers.Field]:
        # `context` is also the serializer's own attribute: declared here, not on the class.
        fields = super().get_fields()
        fields["context"] = serializers.JSONField(required=False, default=dict)
        return fields


class EmailQueued(serializers.Serializer):
    id = serializers.IntegerField()


class EmailOut(serializers.ModelSerializer):
    class Meta:
        model = Email
        fields = ["id", "status", "attempts", "last_error"]


class EmailCreateView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=EmailIn, responses={202: EmailQueued, **error_responses(400, 401, 403)})
    def post(self, request: Request) -> Response:
        data = EmailIn(data=request.data)
        data.is_valid(raise_exception=True)
        email = services.email_queue(**data.validated_data)
        return Response({"id": email.pk}, status=status.HTTP_202_ACCEPTED)


class EmailDetailView(APIView):
    # A mail row belongs to no user (it is addressed to an address): staff only.
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={200: EmailOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, email_id: int) -> Response:
        return Response(EmailOut(selectors.email_get(email_id=email_id)).data)
