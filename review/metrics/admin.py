from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest

from .drift import acknowledge_drift
from .models import AlertIncident, AlertRule, DriftMonitor


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
        "subject",
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


@admin.register(DriftMonitor)
class DriftMonitorAdmin(admin.ModelAdmin[DriftMonitor]):
    """Where a person looks at a drift: acknowledging lifts its hold and re-arms the test."""

    list_display = [
        "agent",
        "action_type",
        "armed_at",
        "reference_size",
        "observed",
        "cusum",
        "alerted_at",
        "hold_policy",
    ]
    list_filter = ["action_type"]
    readonly_fields = [f.name for f in DriftMonitor._meta.fields]
    actions = ["acknowledge"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Acknowledge drift: lift the hold, re-arm on today's evidence")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[DriftMonitor]) -> None:
        user = request.user
        assert isinstance(user, User)
        for monitor in queryset:
            acknowledge_drift(monitor_id=monitor.pk, user=user)
        self.message_user(request, f"Acknowledged {queryset.count()} monitor(s).", messages.SUCCESS)
