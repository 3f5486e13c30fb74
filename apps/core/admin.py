from django.contrib import admin

from .models import IdempotencyRecord


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ("scope", "key", "status_code", "request_id", "created_at")
    search_fields = ("key", "scope", "request_id")
    readonly_fields = [f.name for f in IdempotencyRecord._meta.fields]
