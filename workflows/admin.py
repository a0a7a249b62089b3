from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Action, Effect, StepRun, TraceEvent, WorkflowRun


class ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepInline(ReadOnly, admin.TabularInline[StepRun, WorkflowRun]):
    model = StepRun
    extra = 0
    fields = ["position", "name", "status", "attempts", "error"]


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReadOnly, admin.ModelAdmin[WorkflowRun]):
    list_display = ["id", "workflow", "agent", "status", "created_at"]
    list_filter = ["status", "workflow"]
    inlines = [StepInline]


@admin.register(Action)
class ActionAdmin(ReadOnly, admin.ModelAdmin[Action]):
    list_display = ["id", "action_type", "agent", "confidence", "outcome", "status", "created_at"]
    list_filter = ["status", "outcome", "action_type"]


@admin.register(Effect)
class EffectAdmin(ReadOnly, admin.ModelAdmin[Effect]):
    list_display = ["key", "created_at"]


@admin.register(TraceEvent)
class TraceEventAdmin(ReadOnly, admin.ModelAdmin[TraceEvent]):
    list_display = ["run", "kind", "step_name", "message", "created_at"]
    list_filter = ["kind"]
