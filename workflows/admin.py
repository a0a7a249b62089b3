from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import (
    Action,
    DeadLetter,
    Effect,
    Outbox,
    RunSnapshot,
    StepRun,
    TraceEvent,
    WorkflowRun,
)


class ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepInline(ReadOnly, admin.TabularInline[StepRun, WorkflowRun]):
    model = StepRun
    extra = 0
    fields = ["position", "name", "mode", "status", "attempts", "max_attempts", "error"]


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReadOnly, admin.ModelAdmin[WorkflowRun]):
    """Read-only: retry, rollback and cancel live on the run page (/runs/<id>/), audited."""

    list_display = ["id", "workflow", "agent", "status", "state_version", "wake_at", "created_at"]
    list_filter = ["status", "workflow"]
    search_fields = ["id", "idempotency_key"]
    inlines = [StepInline]

    def view_on_site(self, obj: WorkflowRun) -> str:
        from django.urls import reverse

        return reverse("runs:detail", args=[obj.pk])


@admin.register(RunSnapshot)
class RunSnapshotAdmin(ReadOnly, admin.ModelAdmin[RunSnapshot]):
    list_display = ["run", "version", "changed", "step_name", "actor", "anchor", "created_at"]
    list_select_related = ["run"]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnly, admin.ModelAdmin[DeadLetter]):
    list_display = ["run", "step_name", "attempts", "error", "created_at", "retried_by"]
    list_filter = ["step_name"]


@admin.register(Outbox)
class OutboxAdmin(ReadOnly, admin.ModelAdmin[Outbox]):
    """Sends not yet relayed: normally empty; rows here mean the broker was unreachable."""

    list_display = ["task", "args", "available_at", "attempts", "last_error", "created_at"]


@admin.register(Action)
class ActionAdmin(ReadOnly, admin.ModelAdmin[Action]):
    list_display = ["id", "action_type", "agent", "confidence", "outcome", "status", "created_at"]
    list_filter = ["status", "outcome", "action_type"]


@admin.register(Effect)
class EffectAdmin(ReadOnly, admin.ModelAdmin[Effect]):
    list_display = ["key", "run", "step_name", "created_at"]


@admin.register(TraceEvent)
class TraceEventAdmin(ReadOnly, admin.ModelAdmin[TraceEvent]):
    list_display = ["run", "kind", "step_name", "message", "created_at"]
    list_filter = ["kind"]
