"""The Trace view: enter a request id, see everything it caused in time order."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from ..context import clean_request_id
from ..models import TraceEvent
from ..tracing import trace_for


@admin.register(TraceEvent)
class TraceEventAdmin(admin.ModelAdmin):
    list_display = ("at", "request_id", "kind", "name")
    list_filter = ("kind",)
    search_fields = ("=request_id", "name")
    date_hierarchy = "at"
    readonly_fields = ("request_id", "at", "kind", "name", "detail")
    change_list_template = "admin/tasks/traceevent_changelist.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.trace_view)
        return [path("trace/", view, name="tasks_trace"), *super().get_urls()]

    def trace_view(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.GET.get("request_id", "").strip())
        events = trace_for(request_id) if request_id else []
        first = events[0].at if events else None
        rows = [
            {"event": event, "offset_ms": round((event.at - first).total_seconds() * 1000, 1)}
            for event in events
            if first is not None
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Trace",
            "request_id": request_id or "",
            "rows": rows,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/tasks/trace.html", context)
