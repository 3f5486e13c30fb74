"""Moderation in the admin: search, and a delete that leaves a tombstone with its seq."""

from __future__ import annotations

from typing import Any

import pytest

from apps.chat import services
from apps.chat.models import Message

pytestmark = pytest.mark.django_db

URL = "/admin/chat/message/"


def test_moderators_search_messages_and_delete_them_as_tombstones(
    admin_client: Any, django_user_model: Any
) -> None:
    ann = django_user_model.objects.create_user("ann", password="pw")
    room = services.room_create(name="general", user_id=ann.pk)
    for n, body in enumerate(["hello there", "rude words", "bye"]):
        services.message_send(room_id=room.pk, sender_id=ann.pk, body=body, client_msg_id=str(n))
    found = admin_client.get(URL, {"q": "rude"})
    assert found.status_code == 200
    assert b"rude words" in found.content and b"hello there" not in found.content
    for path in ("/admin/chat/room/", "/admin/chat/membership/"):
        assert admin_client.get(path, {"q": "general"}).status_code == 200
    rude = Message.objects.get(body="rude words")
    answer = admin_client.post(
        URL, {"action": "delete_messages", "_selected_action": [rude.pk], "index": 0}
    )
    assert answer.status_code == 302
    rude.refresh_from_db()
    assert (rude.seq, rude.body, rude.deleted) == (2, "", True)
    assert list(Message.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]
    # No row delete: it would leave a hole in the room's seqs.
    assert admin_client.get(f"{URL}{rude.pk}/delete/").status_code == 403
