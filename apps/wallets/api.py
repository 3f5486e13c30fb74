"""Wallets over HTTP: create, read, and accept transactions that a worker applies in order."""

from __future__ import annotations

from decimal import Decimal
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
from apps.core.pagination import SurgeCursorPagination
from apps.core.schema import error_responses

from . import selectors, services
from .models import MONEY_DECIMAL_PLACES, MONEY_MAX_DIGITS, Wallet, WalletTransaction


class WalletOut(serializers.ModelSerializer):
    class Meta:
        model = Wallet
        fields = ["id", "balance", "last_applied_seq"]


class TransactionIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=WalletTransaction.Kind.choices)
    # A decimal string with at most two places ("12.50"); a JSON number is read through
    # its shortest text form, so 12.5 is 12.50 and 0.1 is 0.10.
    amount = serializers.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES
    )

    def validate_amount(self, amount: Decimal) -> Decimal:
        # Range rules live in services (the setting is read per call, not at import).
        problem = services.amount_problem(amount)
        if problem:
            raise serializers.ValidationError(problem)
        return amount


class TransactionAccepted(serializers.Serializer):
    id = serializers.IntegerField()
    seq = serializers.IntegerField()
    status = serializers.CharField()


class TransactionOut(serializers.ModelSerializer):
    class Meta:
        model = WalletTransaction
        fields = [
            "id",
            "seq",
            "kind",
            "amount",
            "status",
            "balance_after",
            "reason",
            "accepted_at",
            "applied_at",
        ]


class WalletPagination(SurgeCursorPagination):
    ordering = "id"


class TransactionPagination(SurgeCursorPagination):
    """Ascending by `seq`: the order the wallet applies them in."""

    ordering = "seq"


class WalletListCreateView(ListAPIView):
    """The caller's wallets, oldest first; POST opens a new, empty one."""

    serializer_class = WalletOut
    pagination_class = WalletPagination
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> Any:
        return selectors.wallet_list_for_user(user_id=caller_id(self.request))

    @extend_schema(
        request=None,
        responses={
            201: WalletOut,
            **error_responses(400, 401, 409, 422, extra={409: ["idempotency_key_in_use"]}),
        },
        summary="Open a wallet (balance 0.00)",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        wallet = services.wallet_create(owner_id=caller_id(request))
        return Response(WalletOut(wallet).data, status=status.HTTP_201_CREATED)


class WalletDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: WalletOut, **error_responses(401, 404)})
    def get(self, request: Request, wallet_id: int) -> Response:
        wallet = selectors.wallet_get_for_user(wallet_id=wallet_id, user_id=caller_id(request))
        return Response(WalletOut(wallet).data)


class WalletTransactionListCreateView(ListAPIView):
    """The wallet's transactions ascending by `seq`; POST accepts a new one (202)."""

    serializer_class = TransactionOut
    pagination_class = TransactionPagination
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> Any:
        wallet = selectors.wallet_get_for_user(
            wallet_id=self.kwargs["wallet_id"], user_id=caller_id(self.request)
        )
        return selectors.transaction_list(wallet_id=wallet.pk)

    @extend_schema(
        request=TransactionIn,
        responses={
            202: TransactionAccepted,
            **error_responses(400, 401, 404, 409, 422, extra={409: ["idempotency_key_in_use"]}),
        },
        summary="Accept a deposit or withdrawal; it is applied in seq order",
    )
    @idempotent
    def post(self, request: Request, wallet_id: int) -> Response:
        user_id = caller_id(request)
        data = TransactionIn(data=request.data)
        if not data.is_valid():
            # Another user's wallet is a 404 whatever the body says.
            selectors.wallet_get_for_user(wallet_id=wallet_id, user_id=user_id)
            raise serializers.ValidationError(data.errors)
        # The ownership check happens inside the accepting transaction (one query less).
        accepted = services.transaction_accept(
            wallet_id=wallet_id,
            owner_id=user_id,
            kind=data.validated_data["kind"],
            amount=data.validated_data["amount"],
        )
        body = {"id": accepted.pk, "seq": accepted.seq, "status": accepted.status}
        return Response(body, status=status.HTTP_202_ACCEPTED)
