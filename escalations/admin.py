from typing import Any

from django.contrib import admin
from django.forms import ModelForm
from django.http import HttpRequest

from .actions import save_policy
from .models import AgentProfile, AutonomyPolicy, Decision, Escalation, Team


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin[Team]):
    list_display = ["name", "slug", "slack_channel"]
    filter_horizontal = ["members"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(AgentProfile)
class AgentProfileAdmin(admin.ModelAdmin[AgentProfile]):
    list_display = ["name", "team", "trust_level", "customer_facing", "autonomy_paused"]
    list_filter = ["trust_level", "autonomy_paused"]


@admin.register(AutonomyPolicy)
class AutonomyPolicyAdmin(admin.ModelAdmin[AutonomyPolicy]):
    list_display = [
        "name",
        "enabled",
        "priority",
        "workflow",
        "agent",
        "action_type",
        "outcome",
        "min_confidence",
        "irreversible_requires_review",
        "team",
        "version",
    ]
    list_filter = ["enabled", "outcome", "action_type"]
    readonly_fields = ["version", "updated_at"]

    def save_model(
        self, request: HttpRequest, obj: AutonomyPolicy, form: ModelForm[Any], change: bool
    ) -> None:
        save_policy(policy=obj, changed_fields=list(form.changed_data) if change else [])


@admin.register(Escalation)
class EscalationAdmin(admin.ModelAdmin[Escalation]):
    list_display = ["id", "team", "status", "created_at", "decided_at"]
    list_filter = ["status", "team"]
    readonly_fields = [f.name for f in Escalation._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Decision)
class DecisionAdmin(admin.ModelAdmin[Decision]):
    list_display = ["escalation", "verdict", "decided_by", "via", "created_at"]
    list_filter = ["verdict", "via"]
    readonly_fields = [f.name for f in Decision._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
