"""Coupons through the API in-process: shapes, codes, bad input, the bound, the gate."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from apps.coupons import gate, services
from apps.coupons.models import Campaign, Coupon, CouponRequest
from apps.coupons.services import issue
from apps.coupons.tasks import reconcile

pytestmark = pytest.mark.django_db

CAMPAIGNS = "/api/coupons/campaigns/"


@pytest.fixture
def staff(django_user_model) -> APIClient:
    client = APIClient()
    client.force_authenticate(
        django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    )
    return client


@pytest.fixture
def make_user(django_user_model):
    counter = iter(range(10_000))

    def _make() -> APIClient:
        user = django_user_model.objects.create_user(f"u{next(counter)}", password="pw")
        client = APIClient()
        client.force_authenticate(user)
        client.user = user  # type: ignore[attr-defined]
        return client

    return _make


def create(staff: APIClient, **overrides) -> dict:
    body = {"name": "Sale", "total_quantity": 3, "discount_percent": 15} | overrides
    response = staff.post(CAMPAIGNS, body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_create_and_read_campaign(staff: APIClient) -> None:
    campaign = create(staff)
    assert campaign | {"id": 0} == {
        "id": 0,
        "name": "Sale",
        "total_quantity": 3,
        "discount_percent": 15,
        "issued_count": 0,
        "remaining": 3,
        "starts_at": None,
        "ends_at": None,
    }
    assert staff.get(f"{CAMPAIGNS}{campaign['id']}/").json() == campaign


def test_only_staff_create(make_user) -> None:
    response = make_user().post(
        CAMPAIGNS, {"name": "x", "total_quantity": 1, "discount_percent": 5}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"total_quantity": 0}, "total_quantity"),
        ({"total_quantity": -5}, "total_quantity"),
        ({"total_quantity": "many"}, "total_quantity"),
        ({"discount_percent": 101}, "discount_percent"),
        ({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, "ends_at"),
    ],
)
def test_bad_campaigns_are_400_invalid(staff: APIClient, body: dict, field: str) -> None:
    full = {"name": "Sale", "total_quantity": 3, "discount_percent": 15} | body
    response = staff.post(CAMPAIGNS, full, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["fields"]
    assert Campaign.objects.count() == 0


def test_issue_then_drain_then_poll(staff: APIClient, make_user) -> None:
    campaign = create(staff)
    user = make_user()
    issue = user.post(f"{CAMPAIGNS}{campaign['id']}/issue/", HTTP_X_REQUEST_ID="rid-c1")
    assert issue.status_code == 202
    assert issue.json() == {"status": "accepted", "request_id": "rid-c1"}
    assert user.get(f"{CAMPAIGNS}{campaign['id']}/my-request/").json() == {"status": "accepted"}
    assert services.coupons_persist_batch(campaign_id=campaign["id"]) == 1
    polled = user.get(f"{CAMPAIGNS}{campaign['id']}/my-request/").json()
    assert polled["status"] == "issued"
    assert polled["coupon"]["discount_percent"] == 15
    assert re.fullmatch(r"[0-9A-F]{12}", polled["coupon"]["code"])
    mine = user.get("/api/coupons/mine/").json()
    assert [c["code"] for c in mine["results"]] == [polled["coupon"]["code"]]
    assert set(mine["results"][0]) == {
        "id",
        "campaign",
        "code",
        "discount_percent",
        "issued_at",
        "used_at",
    }
    detail = user.get(f"{CAMPAIGNS}{campaign['id']}/").json()
    assert (detail["issued_count"], detail["remaining"]) == (1, 2)


def test_second_request_is_409_and_sold_out_is_410(staff: APIClient, make_user) -> None:
    campaign = create(staff, total_quantity=1)
    url = f"{CAMPAIGNS}{campaign['id']}/issue/"
    first = make_user()
    assert first.post(url).status_code == 202
    again = first.post(url)
    assert (again.status_code, again.json()["code"]) == (409, "already_issued")
    late = make_user().post(url)
    assert (late.status_code, late.json()["code"]) == (410, "sold_out")
    assert CouponRequest.objects.count() == 1


def test_window_and_unknown_campaign(staff: APIClient, make_user) -> None:
    now = timezone.now()
    future = create(staff, starts_at=(now + timedelta(hours=1)).isoformat())
    past = create(
        staff,
        starts_at=(now - timedelta(hours=2)).isoformat(),
        ends_at=(now - timedelta(hours=1)).isoformat(),
    )
    user = make_user()
    for campaign in (future, past):
        response = user.post(f"{CAMPAIGNS}{campaign['id']}/issue/")
        assert (response.status_code, response.json()["code"]) == (403, "campaign_not_active")
    missing = user.post(f"{CAMPAIGNS}999999/issue/")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert user.post(f"{CAMPAIGNS}abc/issue/").status_code == 404
    assert user.get(f"{CAMPAIGNS}{future['id']}/my-request/").status_code == 404


def test_issue_needs_auth(staff: APIClient) -> None:
    campaign = create(staff)
    response = APIClient().post(f"{CAMPAIGNS}{campaign['id']}/issue/")
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")


def test_per_user_rate_limit(staff: APIClient, make_user, settings) -> None:
    settings.COUPON_ISSUE_RATE_LIMIT = 3
    campaigns = [create(staff, name=f"c{i}") for i in range(5)]
    user = make_user()
    statuses = [user.post(f"{CAMPAIGNS}{c['id']}/issue/").status_code for c in campaigns]
    assert statuses == [202, 202, 202, 429, 429]
    limited = user.post(f"{CAMPAIGNS}{campaigns[0]['id']}/issue/")
    assert limited.json()["code"] == "throttled"
    assert int(limited["Retry-After"]) >= 1


def test_gate_lost_is_rebuilt_from_postgres(staff: APIClient, make_user) -> None:
    campaign = create(staff, total_quantity=2)
    url = f"{CAMPAIGNS}{campaign['id']}/issue/"
    first = make_user()
    assert first.post(url).status_code == 202
    gate.gate_delete(campaign["id"])  # as if Redis restarted
    assert first.post(url).status_code == 409  # the rebuilt gate remembers the user
    assert make_user().post(url).status_code == 202
    assert make_user().post(url).status_code == 410


@pytest.mark.parametrize("entry", ["beat task", "admin action", "management command"])
def test_every_reconciliation_entry_rebuilds_a_lost_gate(
    entry: str, staff: APIClient, make_user, admin_client
) -> None:
    """Beat's job, the operator's admin action and `manage.py coupons_reconcile` each load
    a gate Redis lost, from what PostgreSQL accepted (not from the total)."""
    campaign = create(staff, total_quantity=3)
    url = f"{CAMPAIGNS}{campaign['id']}/issue/"
    assert make_user().post(url).status_code == 202
    gate.gate_delete(campaign["id"])  # as if Redis restarted
    assert gate.gate_remaining(campaign["id"]) is None
    if entry == "beat task":
        assert reconcile() == 1  # the task's body, run here; the registry test covers its name
    elif entry == "admin action":
        response = admin_client.post(
            "/admin/coupons/campaign/",
            {"action": "rebuild_gate", "_selected_action": [campaign["id"]]},
            follow=True,
        )
        assert "gate rebuilt, 1 accepted" in response.content.decode()
    else:
        out = io.StringIO()
        call_command("coupons_reconcile", str(campaign["id"]), stdout=out)
        assert "gate rebuilt, 1 accepted" in out.getvalue()
    assert gate.gate_remaining(campaign["id"]) == 2


def test_acceptance_from_a_replaced_gate_is_not_recorded(staff: APIClient, make_user) -> None:
    campaign = create(staff)
    user = make_user()
    stale = gate.gate().accept(
        campaign_id=campaign["id"],
        user_id=user.user.pk,
        now_ms=int(timezone.now().timestamp() * 1000),
        rate_limit=100,
        rate_window_ms=10_000,
        drain_lease_ms=10_000,
    )
    assert stale.kind == "accepted"
    services.gate_rebuild(campaign_id=campaign["id"])  # Redis lost it; rebuilt with a new epoch
    assert not issue._record(
        campaign_id=campaign["id"], user_id=user.user.pk, epoch=stale.epoch, request_id=""
    )
    assert CouponRequest.objects.count() == 0


def test_postgres_refuses_more_coupons_than_the_total(staff: APIClient, django_user_model) -> None:
    campaign = Campaign.objects.get(pk=create(staff, total_quantity=2)["id"])
    users = [django_user_model.objects.create_user(f"b{i}", password="pw") for i in range(3)]
    now = timezone.now()
    Coupon.objects.bulk_create(
        [
            Coupon(campaign=campaign, user=u, code=f"C{i}", discount_percent=15, issued_at=now)
            for i, u in enumerate(users[:2])
        ]
    )
    campaign.refresh_from_db()
    assert campaign.issued_count == 2
    with pytest.raises(IntegrityError), transaction.atomic():
        Coupon.objects.create(
            campaign=campaign, user=users[2], code="C9", discount_percent=15, issued_at=now
        )
    Coupon.objects.filter(user=users[0]).delete()
    campaign.refresh_from_db()
    assert campaign.issued_count == 1


def test_quantity_cannot_drop_below_accepted_and_running_cannot_be_deleted(
    staff: APIClient, make_user
) -> None:
    campaign = create(staff, total_quantity=3)
    url = f"{CAMPAIGNS}{campaign['id']}/"
    make_user().post(f"{url}issue/")
    make_user().post(f"{url}issue/")
    response = staff.patch(url, {"total_quantity": 1}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid")
    assert staff.patch(url, {"total_quantity": 5}, format="json").json()["remaining"] == 3
    refused = staff.delete(url)
    assert (refused.status_code, refused.json()["code"]) == (409, "campaign_running")
    later = create(staff, starts_at=(timezone.now() + timedelta(days=1)).isoformat())
    assert staff.delete(f"{CAMPAIGNS}{later['id']}/").status_code == 204


def test_use_and_return_a_coupon(staff: APIClient, make_user) -> None:
    campaign = create(staff)
    user = make_user()
    user.post(f"{CAMPAIGNS}{campaign['id']}/issue/")
    services.coupons_persist_batch(campaign_id=campaign["id"])
    coupon = Coupon.objects.get()
    assert services.coupon_use(coupon_id=coupon.pk, user_id=user.user.pk, used_by="order:1")
    assert services.coupon_use(coupon_id=coupon.pk, user_id=user.user.pk, used_by="order:1")
    assert not services.coupon_use(coupon_id=coupon.pk, user_id=user.user.pk, used_by="order:2")
    services.coupon_return(coupon_id=coupon.pk, used_by="order:2")  # not the holder: no effect
    assert Coupon.objects.get().used_by == "order:1"
    services.coupon_return(coupon_id=coupon.pk, used_by="order:1")
    assert Coupon.objects.get().used_at is None
    assert services.coupon_use(coupon_id=coupon.pk, user_id=user.user.pk, used_by="order:2")


def test_a_batch_persists_each_request_once_with_distinct_codes(
    staff: APIClient, make_user
) -> None:
    """The batch statement: every accepted request of the campaign becomes one coupon with
    its own code and the campaign's discount, a second pass finds nothing, and another
    campaign's requests are left alone."""
    campaign, other = create(staff, total_quantity=50), create(staff, total_quantity=5)
    users = [make_user() for _ in range(30)]
    for user in users:
        assert user.post(f"{CAMPAIGNS}{campaign['id']}/issue/").status_code == 202
    assert users[0].post(f"{CAMPAIGNS}{other['id']}/issue/").status_code == 202
    assert services.coupons_persist_batch(campaign_id=campaign["id"], batch_size=20) == 20
    assert services.coupons_persist_batch(campaign_id=campaign["id"], batch_size=20) == 10
    assert services.coupons_persist_batch(campaign_id=campaign["id"], batch_size=20) == 0
    coupons = Coupon.objects.filter(campaign_id=campaign["id"])
    assert coupons.count() == 30
    assert len(set(coupons.values_list("code", flat=True))) == 30
    assert set(coupons.values_list("discount_percent", flat=True)) == {15}
    assert sorted(coupons.values_list("user_id", flat=True)) == sorted(u.user.pk for u in users)
    assert not CouponRequest.objects.filter(campaign_id=campaign["id"], status="accepted").exists()
    assert Campaign.objects.get(pk=campaign["id"]).issued_count == 30
    assert CouponRequest.objects.get(campaign_id=other["id"]).status == "accepted"
