from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import AlertIncident, AlertRule


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin[AlertRule]):
    list_display = [
        "name",
        "enabled",
        "metric",
        "agent",
        "workflow",
        "window_minutes",
        "lower_bound",
        "upper_bound",
        "team",
    ]
    list_filter = ["enabled", "metric"]


@admin.register(AlertIncident)
class AlertIncidentAdmin(admin.ModelAdmin[AlertIncident]):
    list_display = [
        "rule",
        "opened_at",
        "closed_at",
        "value_at_open",
        "last_value",
        "samples",
        "notified_at",
        "notify_error",
    ]
    list_filter = ["rule"]
    readonly_fields = [f.name for f in AlertIncident._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
