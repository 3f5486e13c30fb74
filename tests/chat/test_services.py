"""The chat services on real PostgreSQL and Redis: seqs, idempotent sends, read marks,
tombstones and one offline notification per burst."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from apps.chat import presence, services
from apps.chat.models import Membership, Message, Room
from apps.notifications import kinds
from apps.notifications.models import Notification
from tasks.models import OutboxMessage


@pytest.fixture
def ann(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ann", password="pw")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw")


def _room(owner: Any, *others: Any) -> Room:
    room = services.room_create(name="general", user_id=owner.pk)
    for user in others:
        services.room_join(room_id=room.pk, user_id=user.pk)
    return room


def _send(room: Room, user: Any, cid: str, body: str = "hi") -> services.SendResult:
    return services.message_send(room_id=room.pk, sender_id=user.pk, body=body, client_msg_id=cid)


@pytest.mark.django_db
def test_seqs_are_contiguous_and_a_resend_returns_the_original(ann: Any, bob: Any) -> None:
    room = _room(ann, bob)
    first = _send(room, ann, "a")
    assert first.created and first.message.seq == 1
    assert _send(room, bob, "a").message.seq == 2  # client ids are per sender
    again = _send(room, ann, "a", body="changed")
    assert not again.created
    assert (again.message.pk, again.message.body) == (first.message.pk, "hi")
    assert list(Message.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2]
    room.refresh_from_db()
    assert room.last_seq == 2
    # Each stored message (not the resend) enqueued one offline pass; the sender read it.
    assert OutboxMessage.objects.filter(task_name=services.NOTIFY_TASK).count() == 2
    assert Membership.objects.get(room=room, user=ann).last_read_seq == 1


@pytest.mark.django_db
def test_a_non_member_cannot_send_and_leaves_no_gap(ann: Any, bob: Any) -> None:
    room = _room(ann)
    with pytest.raises(services.NotMember):
        _send(room, bob, "x")
    assert _send(room, ann, "y").message.seq == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_get_contiguous_seqs_and_one_row_per_client_id(ann: Any, bob: Any) -> None:
    room = _room(ann, bob)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def sender(index: int) -> None:
        try:
            barrier.wait()
            user = ann if index % 2 else bob
            for n in range(10):
                _send(room, user, f"{index}-{n}")
                _send(room, ann, "shared")  # everyone races on one client id
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    seqs = list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 82))
    assert Message.objects.filter(client_msg_id="shared").count() == 1
    room.refresh_from_db()
    assert room.last_seq == 81


@pytest.mark.django_db
def test_read_marks_only_move_up_and_stop_at_the_last_message(ann: Any, bob: Any) -> None:
    room = _room(ann, bob)
    for n in range(3):
        _send(room, ann, f"m{n}")
    assert services.room_read(room_id=room.pk, user_id=bob.pk, seq=2) == 2
    assert services.room_read(room_id=room.pk, user_id=bob.pk, seq=1) == 2
    assert services.room_read(room_id=room.pk, user_id=bob.pk, seq=99) == 3
    with pytest.raises(services.NotMember):
        services.room_read(room_id=room.pk, user_id=bob.pk + 1000, seq=1)


@pytest.mark.django_db
def test_a_deleted_message_is_a_tombstone_with_its_seq(ann: Any) -> None:
    room = _room(ann)
    message = _send(room, ann, "a", body="oops").message
    services.message_delete(message_id=message.pk)
    services.message_delete(message_id=message.pk)
    message.refresh_from_db()
    assert (message.seq, message.body, message.deleted) == (1, "", True)


@pytest.mark.django_db
def test_joining_counts_the_history_as_read_and_leaving_is_idempotent(ann: Any, bob: Any) -> None:
    room = _room(ann)
    _send(room, ann, "a")
    services.room_join(room_id=room.pk, user_id=bob.pk)
    services.room_join(room_id=room.pk, user_id=bob.pk)
    assert Membership.objects.get(room=room, user=bob).last_read_seq == 1
    services.room_leave(room_id=room.pk, user_id=bob.pk)
    services.room_leave(room_id=room.pk, user_id=bob.pk)
    assert not Membership.objects.filter(room=room, user=bob).exists()
    with pytest.raises(Room.DoesNotExist):
        services.room_join(room_id=room.pk + 1000, user_id=bob.pk)


def _chat_notes(user: Any) -> list[str]:
    return list(
        Notification.objects.filter(user=user, kind=kinds.CHAT_MESSAGE)
        .order_by("id")
        .values_list("source_key", flat=True)
    )


@pytest.mark.django_db
def test_an_offline_member_gets_one_notification_per_burst(
    ann: Any, bob: Any, django_user_model: Any
) -> None:
    cat = django_user_model.objects.create_user("cat", password="pw")
    room = _room(ann, bob, cat)
    presence.presence_join(room.pk, cat.pk)  # cat has a socket open: no push
    try:
        for n in range(10):
            _send(room, ann, f"m{n}")
            services.offline_notify(room_id=room.pk)
        services.offline_notify(room_id=room.pk)  # a repeated pass changes nothing
        assert _chat_notes(bob) == [f"chat:{room.pk}:{bob.pk}:0"]
        assert _chat_notes(cat) == []
        assert _chat_notes(ann) == []  # the sender read their own messages
        # Bob reads; the next burst notifies him once more.
        services.room_read(room_id=room.pk, user_id=bob.pk, seq=10)
        for n in range(3):
            _send(room, ann, f"n{n}")
        services.offline_notify(room_id=room.pk)
        services.offline_notify(room_id=room.pk)
        assert _chat_notes(bob) == [f"chat:{room.pk}:{bob.pk}:0", f"chat:{room.pk}:{bob.pk}:10"]
        assert Notification.objects.filter(user=bob).first().url == f"/chat/?room={room.pk}"  # type: ignore[union-attr]
    finally:
        presence.presence_leave(room.pk, cat.pk)
