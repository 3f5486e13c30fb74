"""Moderation: rooms, members and messages with search; deleting a message leaves a
tombstone (services.message_delete) and tells the room, it never removes the row."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]
    readonly_fields = ["last_read_seq", "joined_at"]
    fields = ["user", "last_read_seq", "joined_at"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_by", "last_seq", "created_at"]
    search_fields = ["name", "created_by__username"]
    raw_id_fields = ["created_by"]
    readonly_fields = ["last_seq", "created_at"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "user", "last_read_seq", "joined_at"]
    search_fields = ["room__name", "user__username"]
    raw_id_fields = ["room", "user"]
    readonly_fields = ["last_read_seq", "notify_checked_seq", "last_notified_seq", "joined_at"]


@admin.action(description="Delete (leave a tombstone and tell the room)")
def delete_messages(
    modeladmin: admin.ModelAdmin[Message], request: HttpRequest, queryset: QuerySet[Message]
) -> None:
    ids = list(queryset.filter(deleted=False).values_list("pk", flat=True))
    for message_id in ids:
        services.message_delete(message_id=message_id)
    modeladmin.message_user(request, f"{len(ids)} message(s) deleted.", messages.SUCCESS)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "seq", "sender", "short_body", "deleted", "created_at"]
    list_filter = ["deleted"]
    search_fields = ["body", "sender__username", "room__name", "client_msg_id"]
    list_select_related = ["room", "sender"]
    raw_id_fields = ["room", "sender"]
    readonly_fields = ["room", "seq", "sender", "body", "client_msg_id", "created_at", "deleted"]
    actions = [delete_messages]

    @admin.display(description="body")
    def short_body(self, obj: Message) -> str:
        return obj.body[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are written through the socket, in seq order

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a row delete would break seq contiguity: use the tombstone action

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        if not request.user.has_perm("chat.change_message"):
            actions.pop("delete_messages", None)
        return actions
