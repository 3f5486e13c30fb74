"""The wallets API: shapes, codes, authorisation, bad input and Idempotency-Key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from apps.wallets import services
from apps.wallets.models import Wallet, WalletTransaction

WALLETS = "/api/wallets/"

pytestmark = pytest.mark.django_db


def _client(django_user_model: Any, username: str) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user(username, password="pw"))
    return client


@pytest.fixture
def ann(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "ann")


@pytest.fixture
def bob(django_user_model: Any) -> APIClient:
    return _client(django_user_model, "bob")


def _wallet(client: APIClient) -> int:
    response = client.post(WALLETS, format="json")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def _tx(client: APIClient, wallet_id: int, body: Any, **headers: str) -> Any:
    return client.post(f"{WALLETS}{wallet_id}/transactions/", body, format="json", **headers)


def test_create_and_read_a_wallet(ann: APIClient) -> None:
    response = ann.post(WALLETS, format="json")
    assert response.status_code == 201
    wallet_id = response.json()["id"]
    assert response.json() == {"id": wallet_id, "balance": "0.00", "last_applied_seq": 0}

    detail = ann.get(f"{WALLETS}{wallet_id}/")
    assert detail.status_code == 200
    assert detail.json() == {"id": wallet_id, "balance": "0.00", "last_applied_seq": 0}


def test_list_shows_only_the_callers_wallets(ann: APIClient, bob: APIClient) -> None:
    mine = [_wallet(ann), _wallet(ann)]
    _wallet(bob)
    response = ann.get(WALLETS)
    assert response.status_code == 200
    assert [w["id"] for w in response.json()["results"]] == mine
    assert response.json()["next"] is None


def test_accept_answers_202_with_the_next_seq(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    first = _tx(ann, wallet_id, {"kind": "deposit", "amount": "12.50"})
    second = _tx(ann, wallet_id, {"kind": "withdrawal", "amount": "3"})
    assert first.status_code == second.status_code == 202
    assert first.json() == {"id": first.json()["id"], "seq": 1, "status": "pending"}
    assert second.json()["seq"] == 2
    stored = WalletTransaction.objects.get(pk=first.json()["id"])
    assert (stored.wallet_id, stored.kind, stored.amount) == (wallet_id, "deposit", Decimal("12.5"))
    assert stored.request_id == first["X-Request-ID"]
    assert Wallet.objects.get(pk=wallet_id).last_seq == 2


def test_transactions_list_ascending_by_seq_with_decisions(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    for kind, amount in [("deposit", "10.00"), ("withdrawal", "25.5"), ("withdrawal", "4.25")]:
        assert _tx(ann, wallet_id, {"kind": kind, "amount": amount}).status_code == 202
    pending = ann.get(f"{WALLETS}{wallet_id}/transactions/").json()["results"]
    assert [(t["seq"], t["status"], t["balance_after"]) for t in pending] == [
        (1, "pending", None),
        (2, "pending", None),
        (3, "pending", None),
    ]

    report = services.transactions_apply(wallet_id=wallet_id)
    assert (report.applied, report.rejected, report.last_applied_seq) == (2, 1, 3)

    rows = ann.get(f"{WALLETS}{wallet_id}/transactions/").json()["results"]
    assert [
        {k: row[k] for k in ("seq", "kind", "amount", "status", "balance_after", "reason")}
        for row in rows
    ] == [
        dict(seq=1, kind="deposit", amount="10.00", status="applied", balance_after="10.00",
             reason=""),
        dict(seq=2, kind="withdrawal", amount="25.50", status="rejected", balance_after="10.00",
             reason="insufficient_funds"),
        dict(seq=3, kind="withdrawal", amount="4.25", status="applied", balance_after="5.75",
             reason=""),
    ]  # fmt: skip
    assert {"id", "accepted_at", "applied_at"} <= set(rows[0])
    assert ann.get(f"{WALLETS}{wallet_id}/").json() == {
        "id": wallet_id,
        "balance": "5.75",
        "last_applied_seq": 3,
    }


def test_transactions_pages_follow_seq(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    for _ in range(5):
        _tx(ann, wallet_id, {"kind": "deposit", "amount": "1.00"})
    seqs: list[int] = []
    url: str | None = f"{WALLETS}{wallet_id}/transactions/?limit=2"
    while url:
        page = ann.get(url).json()
        seqs += [row["seq"] for row in page["results"]]
        url = page["next"]
    assert seqs == [1, 2, 3, 4, 5]


def test_transactions_list_costs_the_same_queries_for_any_page(
    ann: APIClient, django_assert_num_queries: Any
) -> None:
    wallet_id = _wallet(ann)
    for _ in range(30):
        _tx(ann, wallet_id, {"kind": "deposit", "amount": "1.00"})
    # The wallet (authorised) and one page of its log: no query per row.
    with django_assert_num_queries(2):
        response = ann.get(f"{WALLETS}{wallet_id}/transactions/")
    assert len(response.json()["results"]) == 30


def test_json_numbers_are_read_as_decimals(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    assert _tx(ann, wallet_id, {"kind": "deposit", "amount": 12.5}).status_code == 202
    assert _tx(ann, wallet_id, {"kind": "deposit", "amount": 7}).status_code == 202
    amounts = WalletTransaction.objects.order_by("seq").values_list("amount", flat=True)
    assert list(amounts) == [Decimal("12.50"), Decimal("7.00")]


def test_another_users_wallet_is_404_for_reads_and_writes(ann: APIClient, bob: APIClient) -> None:
    wallet_id = _wallet(ann)
    _tx(ann, wallet_id, {"kind": "deposit", "amount": "5.00"})
    for wallet in (wallet_id, 987654321, 10**30):
        for response in (
            bob.get(f"{WALLETS}{wallet}/"),
            bob.get(f"{WALLETS}{wallet}/transactions/"),
            _tx(bob, wallet, {"kind": "deposit", "amount": "1.00"}),
            # Bad input does not tell an existing wallet from a missing one either.
            _tx(bob, wallet, {"kind": "nope", "amount": "x"}),
        ):
            assert response.status_code == 404, (wallet, response.content)
            assert response.json()["code"] == "not_found"
    assert WalletTransaction.objects.count() == 1
    assert Wallet.objects.get(pk=wallet_id).last_seq == 1


def test_anonymous_is_401() -> None:
    client = APIClient()
    for response in (client.get(WALLETS), client.post(WALLETS), client.get(f"{WALLETS}1/")):
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "deposit", "amount": "0"}, "amount"),
        ({"kind": "deposit", "amount": "0.00"}, "amount"),
        ({"kind": "deposit", "amount": "-5.00"}, "amount"),
        ({"kind": "withdrawal", "amount": -1}, "amount"),
        ({"kind": "deposit", "amount": "1.005"}, "amount"),
        ({"kind": "deposit", "amount": 0.001}, "amount"),
        ({"kind": "deposit", "amount": "1e-3"}, "amount"),
        ({"kind": "deposit", "amount": "abc"}, "amount"),
        ({"kind": "deposit", "amount": ""}, "amount"),
        ({"kind": "deposit", "amount": None}, "amount"),
        ({"kind": "deposit", "amount": True}, "amount"),
        ({"kind": "deposit", "amount": ["1.00"]}, "amount"),
        ({"kind": "deposit", "amount": "NaN"}, "amount"),
        ({"kind": "deposit", "amount": "Infinity"}, "amount"),
        ({"kind": "deposit", "amount": "1000000.01"}, "amount"),
        ({"kind": "deposit", "amount": "1" * 40}, "amount"),
        ({"kind": "deposit"}, "amount"),
        ({"kind": "transfer", "amount": "1.00"}, "kind"),
        ({"kind": "", "amount": "1.00"}, "kind"),
        ({"kind": ["deposit"], "amount": "1.00"}, "kind"),
        ({"amount": "1.00"}, "kind"),
        (["deposit", "1.00"], "non_field_errors"),
    ],
)
def test_bad_input_is_400_invalid_with_fields(ann: APIClient, body: Any, field: str) -> None:
    wallet_id = _wallet(ann)
    response = _tx(ann, wallet_id, body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert field in response.json()["fields"]
    assert WalletTransaction.objects.count() == 0
    assert Wallet.objects.get(pk=wallet_id).last_seq == 0


def test_the_maximum_amount_is_a_setting(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    with override_settings(WALLET_MAX_AMOUNT="50.00"):
        assert _tx(ann, wallet_id, {"kind": "deposit", "amount": "50.00"}).status_code == 202
        over = _tx(ann, wallet_id, {"kind": "deposit", "amount": "50.01"})
    assert over.status_code == 400
    assert over.json()["fields"]["amount"] == ["Ensure this value is less than or equal to 50.00."]
    assert _tx(ann, wallet_id, {"kind": "deposit", "amount": "50.01"}).status_code == 202


def test_idempotency_key_replays_and_creates_one_transaction(ann: APIClient) -> None:
    wallet_id = _wallet(ann)
    body = {"kind": "deposit", "amount": "9.99"}
    first = _tx(ann, wallet_id, body, HTTP_IDEMPOTENCY_KEY="pay-1")
    again = _tx(ann, wallet_id, body, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert first.status_code == again.status_code == 202
    assert first.content == again.content
    assert again["Idempotent-Replayed"] == "true"
    assert WalletTransaction.objects.count() == 1
    assert Wallet.objects.get(pk=wallet_id).last_seq == 1

    other = _tx(ann, wallet_id, {"kind": "deposit", "amount": "1.00"}, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    fresh = _tx(ann, wallet_id, body, HTTP_IDEMPOTENCY_KEY="pay-2")
    assert fresh.json()["seq"] == 2
    assert WalletTransaction.objects.count() == 2


def test_idempotency_key_on_wallet_creation(ann: APIClient) -> None:
    first = ann.post(WALLETS, format="json", HTTP_IDEMPOTENCY_KEY="open-1")
    again = ann.post(WALLETS, format="json", HTTP_IDEMPOTENCY_KEY="open-1")
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert Wallet.objects.count() == 1


def test_schema_documents_the_wallet_endpoints() -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/wallets/"])
    assert "get" in paths["/api/wallets/{wallet_id}/"]
    transactions = paths["/api/wallets/{wallet_id}/transactions/"]
    assert {"200"} <= set(transactions["get"]["responses"])
    assert {"202", "400", "404"} <= set(transactions["post"]["responses"])
