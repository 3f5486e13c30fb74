from django.contrib import admin

from .models import Ping


@admin.register(Ping)
class PingAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "message", "request_id", "created_at", "ponged_at")
    search_fields = ("request_id", "message")
    list_filter = ("ponged_at",)
