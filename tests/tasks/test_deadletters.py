"""Dead letters: one per failed task, listed in the admin, replayed once however often the
button is pressed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tasks.deadletters import deadletter_discard, deadletter_record, deadletter_replay
from tasks.errors import IllegalTransition
from tasks.models import DeadLetter, OutboxMessage
from tests.toolkit_app.models import ProbeDelivery, ProbeEffect, ProbeSwitch

from ..harness import LiveProcess, wait_for

FLAKY = "toolkit.probe_flaky"


def _record(task_id: str = "t-1", task_name: str = FLAKY, **overrides: Any) -> int:
    fields: dict[str, Any] = {
        "task_name": task_name,
        "task_id": task_id,
        "message_id": f"msg-{task_id}",
        "args": ["a"],
        "kwargs": {"k": 1},
        "queue": "default",
        "reason": "retries_exhausted",
        "exception_class": "tasks.errors.Transient",
        "exception_message": "down",
        "traceback": "Traceback (most recent call last):\n  boom <here>",
        "request_id": "rid-dl",
        "attempts": 3,
        "first_failed_at": None,
    }
    fields.update(overrides)
    return deadletter_record(**fields)


@pytest.fixture
def staff_client(django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser(f"ops-{uuid.uuid4().hex[:8]}", "", "pw")
    client = Client()
    client.force_login(user)
    return client


def _post_action(client: Client, action: str, ids: list[int]) -> Any:
    return client.post(
        "/admin/tasks/deadletter/",
        {"action": action, "_selected_action": [str(pk) for pk in ids], "index": "0"},
        follow=True,
    )


@pytest.mark.django_db
def test_one_row_per_task_id() -> None:
    first = _record(attempts=3)
    again = _record(attempts=4, exception_message="still down")  # redelivered, failed again
    assert again == first
    dead = DeadLetter.objects.get()
    assert (dead.attempts, dead.exception_message, dead.status) == (4, "still down", "open")
    assert dead.last_failed_at >= dead.first_failed_at
    assert _record(task_id="t-2") != first


@pytest.mark.django_db
def test_replay_enqueues_once_through_the_outbox(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    dead_id = _record()
    with django_capture_on_commit_callbacks(execute=True):
        assert deadletter_replay(dead_letter_id=dead_id) is True
        assert deadletter_replay(dead_letter_id=dead_id) is False
    row = OutboxMessage.objects.get()
    assert (row.task_name, row.args, row.kwargs) == (FLAKY, ["a"], {"k": 1})
    assert row.key == f"deadletter-replay-{dead_id}"
    # The replay is the same logical message and belongs to the same request.
    assert (row.message_id, row.request_id) == ("msg-t-1", "rid-dl")
    dead = DeadLetter.objects.get(pk=dead_id)
    assert dead.status == "replayed" and dead.replayed_at is not None
    assert dead.replay_outbox_id == row.pk
    assert deadletter_discard(dead_letter_id=dead_id) is False  # replayed stays replayed


@pytest.mark.django_db
def test_discard_and_unknown_tasks() -> None:
    dead_id = _record()
    assert deadletter_discard(dead_letter_id=dead_id) is True
    assert deadletter_discard(dead_letter_id=dead_id) is False
    assert deadletter_replay(dead_letter_id=dead_id) is False
    assert DeadLetter.objects.get(pk=dead_id).status == "discarded"
    # A task name this code base does not have: not replayed, stays open.
    unknown = _record(task_id="t-9", task_name="toolkit.renamed_long_ago")
    assert deadletter_replay(dead_letter_id=unknown) is False
    assert DeadLetter.objects.get(pk=unknown).status == "open"
    assert deadletter_replay(dead_letter_id=10**9) is False
    assert not OutboxMessage.objects.exists()


@pytest.mark.django_db
def test_status_transitions_are_explicit() -> None:
    from tasks.deadletters import DEADLETTER_STATUS

    DEADLETTER_STATUS.check("open", "replayed")
    DEADLETTER_STATUS.check("open", "discarded")
    for current, target in [("replayed", "open"), ("discarded", "replayed"), ("replayed", "x")]:
        with pytest.raises(IllegalTransition):
            DEADLETTER_STATUS.check(current, target)


@pytest.mark.django_db
def test_admin_list_filters_and_readonly_detail(staff_client: Client) -> None:
    dead_id = _record()
    _record(task_id="t-2", task_name="toolkit.probe_permanent", reason="permanent")
    page = staff_client.get("/admin/tasks/deadletter/")
    assert page.status_code == 200
    assert FLAKY in page.text and "toolkit.probe_permanent" in page.text
    for query, expected in [
        ({"status": "open", "reason": "permanent"}, ["toolkit.probe_permanent"]),
        ({"task_name": FLAKY}, [FLAKY]),
        ({"status": "discarded"}, []),
        (
            {"last_failed_at__gte": "2000-01-01 00:00:00+00:00"},
            sorted([FLAKY, "toolkit.probe_permanent"]),
        ),
    ]:
        filtered = staff_client.get("/admin/tasks/deadletter/", query)
        assert filtered.status_code == 200
        shown = sorted(row.task_name for row in filtered.context["cl"].result_list)
        assert shown == expected, query
    detail = staff_client.get(f"/admin/tasks/deadletter/{dead_id}/change/")
    assert detail.status_code == 200
    assert "boom &lt;here&gt;" in detail.text  # the traceback, escaped
    assert 'name="_save"' not in detail.text  # read-only
    assert staff_client.get("/admin/tasks/outboxmessage/", {"status": "pending"}).status_code == 200


@pytest.mark.django_db
def test_admin_discard_action(staff_client: Client) -> None:
    ids = [_record(task_id="d-1"), _record(task_id="d-2")]
    response = _post_action(staff_client, "discard", ids)
    assert response.status_code == 200
    assert "Discarded 2 of 2" in response.text
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"discarded"}


# --- Live: a poison task --------------------------------------------------------------------
def _effects(token: str) -> int:
    return ProbeEffect.objects.filter(token=token).count()


def _deliveries(token: str) -> int:
    return ProbeDelivery.objects.filter(token=token).count()


def _all_done() -> bool:
    return not OutboxMessage.objects.filter(done_at__isnull=True).exists()


def _poison(token: str) -> DeadLetter:
    """Enqueues the flaky probe with its switch broken; returns its one dead letter."""
    from tasks.outbox import outbox_enqueue

    ProbeSwitch.objects.create(token=token, broken=True)
    outbox_enqueue(FLAKY, args=[token])
    dead = wait_for(
        lambda: DeadLetter.objects.filter(task_name=FLAKY, args=[token]).first(),
        timeout=30,
        what="the dead letter",
    )
    wait_for(_all_done, timeout=30, what="the row to be confirmed")
    return dead  # type: ignore[no-any-return]


@pytest.mark.live
def test_poison_task_ends_as_one_dead_letter_and_replays_once(live_worker: LiveProcess) -> None:
    token = f"poison-{uuid.uuid4().hex}"
    dead = _poison(token)
    # max_retries=2: the first run and two retries, then the dead letter.
    assert _deliveries(token) == 3
    assert list(
        ProbeDelivery.objects.filter(token=token).order_by("id").values_list("retries", flat=True)
    ) == [0, 1, 2]
    # Every retry is the same logical message (the headers travel with the retries).
    assert set(ProbeDelivery.objects.filter(token=token).values_list("message_id", flat=True)) == {
        dead.message_id
    }
    assert dead.message_id == dead.task_id  # "outbox-<id>"
    assert (dead.reason, dead.attempts, dead.status) == ("retries_exhausted", 3, "open")
    assert dead.exception_class == "tasks.errors.Transient"
    assert f"switch {token} is broken" in dead.exception_message
    assert "raise Transient" in dead.traceback
    assert dead.first_failed_at < dead.last_failed_at
    assert DeadLetter.objects.filter(args=[token]).count() == 1
    assert _effects(token) == 0

    # The operator fixes the cause and replays; a second replay does nothing.
    ProbeSwitch.objects.filter(token=token).update(broken=False)
    assert deadletter_replay(dead_letter_id=dead.pk) is True
    assert deadletter_replay(dead_letter_id=dead.pk) is False
    wait_for(lambda: _effects(token) == 1, timeout=30, what="the replayed run's effect")
    wait_for(_all_done, timeout=30, what="the replay to be confirmed")
    assert (_deliveries(token), _effects(token)) == (4, 1)
    assert DeadLetter.objects.filter(args=[token]).count() == 1
    assert DeadLetter.objects.get(pk=dead.pk).status == "replayed"


@pytest.mark.live
def test_admin_replay_action_runs_the_task_once(
    live_worker: LiveProcess, staff_client: Client
) -> None:
    token = f"poison-admin-{uuid.uuid4().hex}"
    dead = _poison(token)
    ProbeSwitch.objects.filter(token=token).update(broken=False)

    first = _post_action(staff_client, "replay", [dead.pk])
    assert first.status_code == 200 and "Replayed 1 of 1" in first.text
    second = _post_action(staff_client, "replay", [dead.pk])  # the double click
    assert second.status_code == 200 and "Replayed 0 of 1" in second.text

    wait_for(lambda: _effects(token) == 1, timeout=30, what="the replayed run's effect")
    wait_for(_all_done, timeout=30, what="the replay to be confirmed")
    assert (_deliveries(token), _effects(token)) == (4, 1)
    assert OutboxMessage.objects.filter(key=f"deadletter-replay-{dead.pk}").count() == 1
