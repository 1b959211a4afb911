from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the log is append-only, and the admin must not offer to change it."""

    list_display = (
        "sequence",
        "occurred_at",
        "action",
        "outcome",
        "actor_kind",
        "actor_id",
        "facility_id",
        "target_kind",
        "target_id",
        "client_address",
    )
    list_filter = ("outcome", "action", "actor_kind")
    search_fields = ("=actor_id", "=target_id", "=patient_id", "=study_id", "client_address")
    date_hierarchy = "occurred_at"
    show_full_result_count = False  # COUNT(*) over millions of rows on every page is needless

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
