"""The emails API: shapes, staff only, bad input as 400 with fields; and the transactional
mails other apps' writes queue."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.accounts import services as account_services
from apps.emails import services
from apps.emails.models import Email

pytestmark = pytest.mark.django_db

EMAILS = "/api/emails/"


@pytest.fixture
def staff(django_user_model: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(
        django_user_model.objects.create_user("op", password="pw", is_staff=True)
    )
    return client


@pytest.fixture
def ann(django_user_model: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("ann", password="pw"))
    return client


def test_staff_queue_a_mail_and_read_its_status(staff: APIClient) -> None:
    body = {"to": "bob@example.com", "template": "welcome", "context": {"username": "bob"}}
    response = staff.post(EMAILS, {**body, "priority": "high"}, format="json")
    assert response.status_code == 202, response.content
    assert set(response.json()) == {"id"}
    email = Email.objects.get(pk=response.json()["id"])
    assert (email.to, email.priority, email.subject) == (
        "bob@example.com",
        "high",
        "Welcome to Surge, bob",
    )
    detail = staff.get(f"{EMAILS}{email.pk}/")
    assert detail.status_code == 200
    assert detail.json() == {"id": email.pk, "status": "queued", "attempts": 0, "last_error": ""}
    assert staff.get(f"{EMAILS}{email.pk + 1000}/").json()["code"] == "not_found"


def test_only_staff(ann: APIClient) -> None:
    response = ann.post(EMAILS, {"to": "a@example.com", "template": "generic"}, format="json")
    assert response.status_code == 403
    assert APIClient().post(EMAILS, {}, format="json").status_code == 401
    assert not Email.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "nobody", "template": "welcome"}, "to"),
        ({"to": "a@example.com\r\nBcc: b@example.com", "template": "welcome"}, "to"),
        (
            {
                "to": "a@example.com",
                "template": "generic",
                "context": {"subject": "x\ny", "body": "b"},
            },
            "subject",
        ),
        ({"to": "a@example.com", "template": "missing"}, "template"),
        ({"to": "a@example.com", "template": "generic", "context": {"body": "b"}}, "context"),
        ({"to": "a@example.com", "template": "generic", "priority": "now"}, "priority"),
        ({"template": "generic"}, "to"),
    ],
)
def test_bad_input_is_400_with_fields(staff: APIClient, body: dict[str, Any], field: str) -> None:
    response = staff.post(EMAILS, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid" and field in response.json()["fields"]
    assert not Email.objects.exists()


def test_registration_with_an_address_queues_a_high_welcome() -> None:
    account_services.user_register(username="carol", password="pw", email="carol@example.com")
    account_services.user_register(username="dave", password="pw")
    [email] = Email.objects.all()
    assert (email.to, email.priority, email.subject) == (
        "carol@example.com",
        "high",
        "Welcome to Surge, carol",
    )


def test_order_confirmation_is_queued_high(django_user_model: Any) -> None:
    from apps.orders.models import Order

    user = django_user_model.objects.create_user("erin", password="pw", email="erin@example.com")
    order = Order.objects.create(user=user, subtotal="10.00", total="10.00")
    email = services.email_order_confirmation(order_id=order.pk)
    assert email is not None and (email.to, email.priority) == ("erin@example.com", "high")
    assert email.subject == f"Order {order.pk} confirmed" and "10.00" in email.text


def test_a_bad_stored_address_costs_the_mail_not_the_callers_write(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("fay", password="pw", email="not an address")
    assert services.email_welcome(user_id=user.pk) is None
    assert not Email.objects.exists()


def test_the_admin_lists_filters_and_resends(django_user_model: Any, client: Any) -> None:
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    email = services.email_queue(
        to="g@example.com", template="generic", context={"subject": "S", "body": "B"}
    )
    listing = client.get("/admin/emails/email/?status__exact=queued")
    assert listing.status_code == 200 and b"g@example.com" in listing.content
    response = client.post(
        "/admin/emails/email/", {"action": "resend", "_selected_action": [email.pk]}
    )
    assert response.status_code == 302
    copy = Email.objects.exclude(pk=email.pk).get()
    assert (copy.to, copy.text, copy.status) == (email.to, email.text, "queued")
    assert copy.message_id != email.message_id  # a new message, not a repeat
    assert client.get("/admin/emails/suppression/").status_code == 200
    assert client.get("/admin/emails/campaign/").status_code == 200
