"""Prompt versions in the admin: test against the configured model, activate, roll back —
each one click, each audited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest

from .actions import (
    PromptError,
    activate_prompt_version,
    evaluate_prompt_version,
    rollback_prompt,
)
from .models import ModelCall, PromptAudit, PromptEvalCase, PromptStatus, PromptVersion


def _user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin[PromptVersion]):
    list_display = ["name", "version", "status", "model", "activated_at", "eval_result"]
    list_filter = ["status", "name"]
    readonly_fields = ["status", "activated_at", "last_eval", "created_at"]
    actions = ["test_selected", "activate_selected", "rollback_selected"]

    @admin.display(description="last evaluation")
    def eval_result(self, obj: PromptVersion) -> str:
        if not obj.last_eval:
            return "—"
        cases = obj.last_eval.get("cases", [])
        passed = sum(1 for c in cases if c.get("passed"))
        return f"{passed}/{len(cases)} passed on {obj.last_eval.get('model', '?')}"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # A version that has been tested is frozen: what passed is what goes live.
        if obj is not None and obj.status != PromptStatus.DRAFT:
            return [f.name for f in PromptVersion._meta.fields]
        return self.readonly_fields

    @admin.action(description="Test against the configured model (draft -> tested)")
    def test_selected(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        for version in queryset:
            try:
                report = evaluate_prompt_version(version=version, by=_user(request))
            except PromptError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            failed = [
                f"{c['case']}: {'; '.join(c['failures'])}"
                for c in report["cases"]
                if not c["passed"]
            ]
            if report["passed"]:
                self.message_user(
                    request,
                    f"{version.name} v{version.version}: all "
                    f"{len(report['cases'])} cases passed; it can be activated.",
                )
            else:
                detail = report.get("error") or " | ".join(failed)
                self.message_user(
                    request,
                    f"{version.name} v{version.version} stays a draft: {detail}",
                    messages.ERROR,
                )

    @admin.action(description="Activate (tested -> active)")
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        for version in queryset:
            try:
                activate_prompt_version(version=version, by=_user(request))
                self.message_user(request, f"{version.name} v{version.version} is live.")
            except PromptError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Roll back to the previously active version")
    def rollback_selected(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        for name in sorted({v.name for v in queryset}):
            try:
                back = rollback_prompt(name=name, by=_user(request))
                self.message_user(request, f"{name}: v{back.version} is live again.")
            except PromptError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    def save_model(self, request: HttpRequest, obj: PromptVersion, form: Any, change: bool) -> None:
        if not change:
            # A new version is always a draft with the next number.
            last = PromptVersion.objects.filter(name=obj.name).order_by("-version").first()
            obj.version = (last.version + 1) if last else 1
            obj.status = PromptStatus.DRAFT
        super().save_model(request, obj, form, change)

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["version"] if obj is None else []


@admin.register(PromptEvalCase)
class PromptEvalCaseAdmin(admin.ModelAdmin[PromptEvalCase]):
    list_display = ["prompt_name", "name"]
    list_filter = ["prompt_name"]


@admin.register(PromptAudit)
class PromptAuditAdmin(admin.ModelAdmin[PromptAudit]):
    list_display = ["at", "prompt_name", "version", "event", "by", "detail"]
    list_filter = ["event", "prompt_name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelCall)
class ModelCallAdmin(admin.ModelAdmin[ModelCall]):
    list_display = [
        "created_at",
        "prompt_name",
        "prompt_version",
        "model",
        "ok",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
    ]
    list_filter = ["ok", "model", "prompt_name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
