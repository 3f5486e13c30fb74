"""The chat socket on real uvicorn, a real Celery worker, PostgreSQL and Redis.

Every assertion is exact: each socket sees each message of its room once, in seq order,
with seqs contiguous; a resume gives exactly what was missed, then live ones."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.chat import services
from apps.chat.models import Message, Room
from apps.notifications import kinds
from apps.notifications.models import Notification
from tasks.models import OutboxMessage

from ..harness import wait_for
from .conftest import ChatSocket, Member

pytestmark = pytest.mark.live

Connect = Callable[[int, Member], ChatSocket]


def _seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [int(f["seq"]) for f in frames]


def _store(room: Room, member: Member, count: int, prefix: str) -> list[int]:
    """Messages stored by the services (as a web or ws process would), broadcast after
    their commits; returns their seqs."""
    return [
        services.message_send(
            room_id=room.pk, sender_id=member.id, body=f"{prefix}{n}", client_msg_id=f"{prefix}{n}"
        ).message.seq
        for n in range(count)
    ]


def _fan_out(
    rooms: list[tuple[Room, list[Member]]],
    connect: Callable[[int, int, Member], ChatSocket],
    sends: int,
) -> None:
    """Every member of every room sends `sends` messages at once; each socket must get
    each message of its room once, seqs contiguous, own echoed, all in one order."""
    sockets = [
        (room, m, connect(index, room.pk, m))
        for room, members in rooms
        for index, m in enumerate(members)
    ]
    barrier = threading.Barrier(len(sockets))

    def client(room: Room, member: Member, sock: ChatSocket) -> tuple[list[Any], set[str]]:
        expected = len(next(ms for r, ms in rooms if r.pk == room.pk)) * sends
        barrier.wait()
        mine = {sock.say(f"{member.id}:{n}") for n in range(sends)}
        return sock.until("message", want=expected, timeout=40), mine

    with ThreadPoolExecutor(len(sockets)) as pool:
        results = list(pool.map(lambda args: client(*args), sockets))
    orders: dict[int, set[tuple[tuple[int, int], ...]]] = {}
    for (room, _member, sock), (frames, mine) in zip(sockets, results, strict=True):
        assert _seqs(frames) == list(range(1, len(frames) + 1))
        assert {f["room"] for f in frames} == {room.pk}
        assert mine <= {f["client_msg_id"] for f in frames}  # own messages echoed
        orders.setdefault(room.pk, set()).add(tuple((f["seq"], f["id"]) for f in frames))
        assert [f for f in sock.quiet(0.3) if f["type"] == "message"] == []
    for room, members in rooms:
        assert len(orders[room.pk]) == 1  # every member saw the same order
        assert Message.objects.filter(room=room).count() == len(members) * sends


def test_clients_in_several_rooms_each_see_their_room_once_in_seq_order(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    rooms = []
    for _ in range(4):
        members = [make_member() for _ in range(5)]
        rooms.append((make_room(*members), members))
    _fan_out(rooms, lambda _i, room_id, m: chat_socket(room_id, m), sends=10)


def test_members_on_two_ws_processes_see_one_order(
    make_member: Callable[[], Member],
    make_room: Callable[..., Room],
    chat_socket: Connect,
    chat_socket_on: Connect,
) -> None:
    members = [make_member() for _ in range(6)]
    room = make_room(*members)
    # Even-numbered members on the first process, the others on the second.
    _fan_out(
        [(room, members)],
        lambda i, room_id, m: (chat_socket if i % 2 == 0 else chat_socket_on)(room_id, m),
        sends=10,
    )


def test_a_reconnecting_client_resumes_with_exactly_what_it_missed_then_live(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    ann, bob = make_member(), make_member()
    room = make_room(ann, bob)
    sock = chat_socket(room.pk, ann)
    seen = _store(room, bob, 3, "seen")
    assert _seqs(sock.until("message", 3)) == seen
    sock.close()
    missed = _store(room, bob, 30, "missed")

    sock = chat_socket(room.pk, ann)
    # More arrive while the resume reads PostgreSQL: none lost, none twice.
    during = threading.Thread(target=_store, args=(room, bob, 10, "during"))
    sock.send({"type": "resume", "after_seq": seen[-1]})
    during.start()
    during.join()
    frames = sock.until("message", 40)
    assert _seqs(frames) == list(range(seen[-1] + 1, seen[-1] + 41))
    assert [f["body"] for f in frames[:30]] == [f"missed{n}" for n in range(30)]
    assert _seqs(frames[:30]) == missed
    live = _store(room, bob, 2, "live")
    assert _seqs(sock.until("message", 2)) == live
    assert [f for f in sock.quiet() if f["type"] == "message"] == []
    # A second resume from the same point sends nothing this socket already sent.
    sock.send({"type": "resume", "after_seq": seen[-1]})
    assert [f for f in sock.quiet() if f["type"] == "message"] == []


def test_a_repeated_client_msg_id_is_stored_and_broadcast_once(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    ann, bob = make_member(), make_member()
    room = make_room(ann, bob)
    watcher = chat_socket(room.pk, bob)
    first, second = chat_socket(room.pk, ann), chat_socket(room.pk, ann)
    cid = uuid.uuid4().hex
    barrier = threading.Barrier(2)

    def race(sock: ChatSocket) -> None:
        barrier.wait()
        sock.say("once", cid)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(race, [first, second]))
    for sock in (first, second, watcher):
        frames = [f for f in [*sock.until("message"), *sock.quiet()] if f["type"] == "message"]
        assert [(f["seq"], f["client_msg_id"]) for f in frames] == [(1, cid)]
    first.say("resent", cid)  # the same socket resends: nothing stored, nothing repeated
    assert [f for f in first.quiet() if f["type"] == "message"] == []
    # A new connection resending it gets the original back; nobody else hears of it.
    third = chat_socket(room.pk, ann)
    third.say("resent", cid)
    original = third.until("message")[0]
    assert (original["seq"], original["body"]) == (1, "once")
    assert [f for f in watcher.quiet() if f["type"] == "message"] == []
    assert Message.objects.filter(room=room).count() == 1


def test_refused_connections_get_nothing(
    make_member: Callable[[], Member],
    make_room: Callable[..., Room],
    ws_connect: Callable[..., Any],
) -> None:
    ann, outsider = make_member(), make_member()
    room = make_room(ann)
    path = f"/ws/chat/{room.pk}/"
    for kwargs in (
        {"token": outsider.token},
        {"token": None},
        {"token": "not-a-token"},
        {"token": ann.token, "origin": "http://evil.example"},
    ):
        with pytest.raises(InvalidStatus):
            ws_connect(path, **kwargs)
    with pytest.raises(InvalidStatus):
        ws_connect(f"/ws/chat/{room.pk + 999}/", token=ann.token)
    with ws_connect(path, token=ann.token) as ws:  # the member is let in
        assert "hello" in ws.recv(timeout=5)


def test_bad_frames_get_an_error_and_the_socket_stays_open(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    ann = make_member()
    room = make_room(ann)
    sock = chat_socket(room.pk, ann)
    cases: list[tuple[Any, str]] = [
        ("{not json", "invalid"),
        ({"no": "type"}, "invalid"),
        ({"type": "shout"}, "unknown_type"),
        ({"type": "message.send", "body": "x" * 4097, "client_msg_id": "big"}, "too_large"),
        ({"type": "message.send", "body": "", "client_msg_id": "empty"}, "invalid"),
        ({"type": "message.send", "body": "hi"}, "invalid"),
        ({"type": "resume", "after_seq": -1}, "invalid"),
        ({"type": "read", "seq": "x"}, "invalid"),
    ]
    for frame, code in cases:
        sock.send(frame)
        error = sock.next(timeout=5)
        assert (error["type"], error["code"]) == ("error", code), frame
        assert error["detail"]
    sock.say("é" * 2048)  # 4 KB exactly, in UTF-8 bytes: allowed
    assert sock.until("message")[0]["seq"] == 1
    assert Message.objects.filter(room=room).count() == 1


def test_a_flood_is_rate_limited_and_not_stored(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    ann = make_member()
    room = make_room(ann)
    sock = chat_socket(room.pk, ann)
    for n in range(25):
        sock.say(f"flood {n}", f"f{n}")
    frames = [sock.next(timeout=10) for _ in range(25)]
    stored = [f for f in frames if f["type"] == "message"]
    limited = [f for f in frames if f["type"] == "error"]
    assert {f["code"] for f in limited} == {"rate_limited"}
    assert 10 <= len(stored) < 25 and len(stored) + len(limited) == 25
    assert len(stored) <= 10 * 2  # at most the limit per second the flood lasted
    assert Message.objects.filter(room=room).count() == len(stored)
    assert _seqs(stored) == list(range(1, len(stored) + 1))
    time.sleep(1.05)  # the next second: allowed again, and the socket is open
    sock.say("calm")
    assert sock.until("message")[0]["body"] == "calm"


def test_typing_read_marks_and_deletions_reach_the_right_sockets(
    make_member: Callable[[], Member], make_room: Callable[..., Room], chat_socket: Connect
) -> None:
    ann, bob = make_member(), make_member()
    room = make_room(ann, bob)
    ann_one, ann_two, bob_sock = (
        chat_socket(room.pk, ann),
        chat_socket(room.pk, ann),
        chat_socket(room.pk, bob),
    )
    bob_sock.send({"type": "typing"})
    for sock in (ann_one, ann_two):
        assert sock.until("typing")[0]["user"] == {"id": bob.id, "username": bob.user.username}
    seqs = _store(room, bob, 3, "r")
    ann_one.send({"type": "read", "seq": seqs[1]})
    assert ann_two.until("read")[0] == {"type": "read", "room": room.pk, "seq": seqs[1]}
    assert [f for f in ann_one.quiet() if f["type"] in ("read", "typing")] == []
    assert [f for f in bob_sock.quiet() if f["type"] in ("read", "typing")] == []
    message = Message.objects.get(room=room, seq=seqs[0])
    services.message_delete(message_id=message.pk)
    for sock in (ann_one, ann_two, bob_sock):
        deleted = sock.until("message.deleted")[0]
        assert deleted == {"type": "message.deleted", "room": room.pk, "seq": 1, "id": message.pk}
    # A ping sends what no live event announced: a row committed whose event was lost
    # (written here without one, as a full channel would drop it).
    room.refresh_from_db()
    Room.objects.filter(pk=room.pk).update(last_seq=room.last_seq + 1)
    Message.objects.create(room=room, seq=room.last_seq + 1, sender=bob.user, client_msg_id="q")
    unannounced = [room.last_seq + 1]
    assert [f for f in bob_sock.quiet(0.3) if f["type"] == "message"] == []
    bob_sock.send({"type": "ping"})
    frames = [bob_sock.next(), bob_sock.next()]
    assert [(f["type"], f.get("seq")) for f in frames] == [
        ("message", unannounced[0]),
        ("pong", None),
    ]
    # Leaving closes the leaver's sockets to the room.
    services.room_leave(room_id=room.pk, user_id=bob.id)
    with pytest.raises(ConnectionClosed):
        bob_sock.quiet(2)
    tomb = chat_socket(room.pk, ann)
    tomb.send({"type": "resume", "after_seq": 0})
    frames = tomb.until("message", 3)
    assert (frames[0]["deleted"], frames[0]["body"], _seqs(frames)) == (True, "", [1, 2, 3])
    assert _seqs(tomb.until("message")) == unannounced


def test_a_member_not_connected_gets_one_notification_for_a_burst(
    make_member: Callable[[], Member],
    make_room: Callable[..., Room],
    chat_socket: Connect,
    live_worker: Any,
) -> None:
    ann, bob, cat = make_member(), make_member(), make_member()
    room = make_room(ann, bob, cat)
    sender, _listening = chat_socket(room.pk, ann), chat_socket(room.pk, cat)
    for n in range(10):
        sender.say(f"burst {n}")
    assert len(sender.until("message", 10)) == 10
    passes = OutboxMessage.objects.filter(task_name=services.NOTIFY_TASK, args=[room.pk])
    wait_for(lambda: passes.count() == 10 and not passes.filter(done_at__isnull=True).exists())
    notes = Notification.objects.filter(kind=kinds.CHAT_MESSAGE)
    assert [(n.user_id, n.url) for n in notes] == [(bob.id, f"/chat/?room={room.pk}")]
