"""The gateway's state and rules: tokens, idempotency keys, authorizations, totals."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

TOKENS = frozenset(
    {
        "tok_ok",
        "tok_decline",
        "tok_timeout",
        "tok_flaky",
        "tok_capture_fails",
        "tok_void_fails",
        "tok_slow",
    }
)
# Far beyond any client timeout: what matters is that the client gives up first.
TIMEOUT_HOLD_S = 30.0
MAX_BODY_BYTES = 64 * 1024
MAX_AMOUNT = Decimal("1000000000")
CENTS = Decimal("0.01")
EFFECTS = ("authorized", "captured", "voided")

OPERATION_PATH = re.compile(
    r"^/v1/authorizations/(?P<id>auth_[0-9a-f]{1,64})/(?P<op>capture|void)$"
)
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass
class Reply:
    """An answer; `remember` says whether it is the final one for its idempotency key."""

    status: int
    body: dict[str, Any]
    remember: bool = False


@dataclass
class Remembered:
    fingerprint: str
    status: int
    body: dict[str, Any]
    token: str


@dataclass
class Authorization:
    id: str
    reference: str
    token: str
    amount: Decimal
    currency: str
    status: str = "authorized"  # -> "captured" | "voided"
    captured_amount: Decimal | None = None


@dataclass
class Totals:
    count: int = 0
    amount: Decimal = field(default_factory=Decimal)


class BadRequest(Exception):
    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


class Gateway:
    """The in-memory state and the rules. Every method runs between two awaits of the event
    loop, so a check and the write that follows it can never interleave with another request:
    that is what makes "remembered once" and "counted once" hold without locks."""

    def __init__(self, *, delay_s: float) -> None:
        self.delay_s = delay_s
        self.reset()

    def reset(self) -> None:
        self.authorizations: dict[str, Authorization] = {}
        self.remembered: dict[str, Remembered] = {}
        # (kind, authorization id or reference) already answered 503 once, for tok_flaky.
        self.flaky_seen: set[tuple[str, str]] = set()
        self.voids_failing = True
        self.totals = {effect: Totals() for effect in EFFECTS}
        self.by_reference: dict[str, dict[str, Any]] = {}
        self.replays = 0

    # --- idempotency ---------------------------------------------------------------------

    def replay(self, key: str, fingerprint: str) -> Remembered | Reply | None:
        """The remembered answer for `key`, a 409 if the key was used for another request,
        or None if the key is new."""
        remembered = self.remembered.get(key)
        if remembered is None:
            return None
        if remembered.fingerprint != fingerprint:
            return Reply(409, {"error": "idempotency_key_reused"})
        self.replays += 1
        return remembered

    def remember(self, key: str, fingerprint: str, reply: Reply, token: str) -> None:
        if reply.remember:
            self.remembered[key] = Remembered(fingerprint, reply.status, reply.body, token)

    # --- operations ----------------------------------------------------------------------

    def token_of_request(self, op: str, auth_id: str | None, payload: dict[str, Any]) -> str:
        if op == "authorize":
            token = payload.get("token")
            return token if isinstance(token, str) else ""
        authorization = self.authorizations.get(auth_id or "")
        return authorization.token if authorization else ""

    def first_call_fails(self, kind: str, subject: str) -> bool:
        """tok_flaky: True the first time `kind` is called for `subject`, then never again."""
        if (kind, subject) in self.flaky_seen:
            return False
        self.flaky_seen.add((kind, subject))
        return True

    def authorize(self, payload: dict[str, Any]) -> Reply:
        token = payload.get("token")
        if not isinstance(token, str) or token not in TOKENS:
            raise BadRequest("invalid_token")
        reference = payload.get("reference")
        if not isinstance(reference, str) or not 0 < len(reference) <= 200:
            raise BadRequest("invalid_reference")
        amount = _amount(payload.get("amount"))
        currency = payload.get("currency", "EUR")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise BadRequest("invalid_currency")
        if token == "tok_flaky" and self.first_call_fails("authorize", reference):
            return Reply(503, {"error": "unavailable"})
        if token == "tok_decline":
            return Reply(402, {"error": "declined"}, remember=True)
        authorization = Authorization(
            id=f"auth_{uuid.uuid4().hex}",
            reference=reference,
            token=token,
            amount=amount,
            currency=currency,
        )
        self.authorizations[authorization.id] = authorization
        self._count(authorization, "authorized", amount)
        body = {
            "id": authorization.id,
            "status": "authorized",
            "amount": _money(amount),
            "currency": currency,
            "reference": reference,
        }
        return Reply(201, body, remember=True)

    def capture(self, auth_id: str, payload: dict[str, Any]) -> Reply:
        authorization = self._authorization(auth_id)
        amount = authorization.amount
        if payload.get("amount") is not None:
            amount = _amount(payload["amount"])
            if amount > authorization.amount:
                raise BadRequest("amount_exceeds_authorization")
        if authorization.token == "tok_flaky" and self.first_call_fails("capture", auth_id):
            return Reply(503, {"error": "unavailable"})
        if authorization.status != "authorized":
            return Reply(409, {"error": f"already_{authorization.status}"})
        if authorization.token in ("tok_capture_fails", "tok_void_fails"):
            return Reply(402, {"error": "capture_declined"}, remember=True)
        authorization.status = "captured"
        authorization.captured_amount = amount
        self._count(authorization, "captured", amount)
        body = {"id": auth_id, "status": "captured", "amount": _money(amount)}
        return Reply(200, body, remember=True)

    def void(self, auth_id: str) -> Reply:
        authorization = self._authorization(auth_id)
        if authorization.token == "tok_void_fails" and self.voids_failing:
            return Reply(503, {"error": "unavailable"})
        if authorization.token == "tok_flaky" and self.first_call_fails("void", auth_id):
            return Reply(503, {"error": "unavailable"})
        if authorization.status == "captured":
            return Reply(409, {"error": "already_captured"})
        if authorization.status == "authorized":
            authorization.status = "voided"
            self._count(authorization, "voided", authorization.amount)
        # Voiding a voided authorization is a no-op success: the caller's goal holds.
        return Reply(200, {"id": auth_id, "status": "voided"}, remember=True)

    def _authorization(self, auth_id: str) -> Authorization:
        authorization = self.authorizations.get(auth_id)
        if authorization is None:
            raise BadRequest("authorization_not_found", status=404)
        return authorization

    def _count(self, authorization: Authorization, effect: str, amount: Decimal) -> None:
        totals = self.totals[effect]
        totals.count += 1
        totals.amount += amount
        row = self.by_reference.setdefault(
            authorization.reference,
            {"authorized": 0, "captured": 0, "voided": 0, "captured_amount": Decimal(0)},
        )
        row[effect] += 1
        if effect == "captured":
            row["captured_amount"] += amount

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            effect: {"count": totals.count, "amount": _money(totals.amount)}
            for effect, totals in self.totals.items()
        }
        result["by_reference"] = {
            reference: {**row, "captured_amount": _money(row["captured_amount"])}
            for reference, row in self.by_reference.items()
        }
        result["replays"] = self.replays
        result["voids_failing"] = self.voids_failing
        return result


def _amount(value: Any) -> Decimal:
    """A positive amount with at most two decimals, from a string or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest("invalid_amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise BadRequest("invalid_amount") from None
    if (
        not amount.is_finite()
        or amount <= 0
        or amount > MAX_AMOUNT
        or amount != amount.quantize(CENTS)
    ):
        raise BadRequest("invalid_amount")
    return amount.quantize(CENTS)


def _money(amount: Decimal) -> str:
    return str(amount.quantize(CENTS))
