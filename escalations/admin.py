"""The admin: where people tune autonomy from evidence.

The policy page previews a draft's effect on recorded actions before it is saved (what-if),
shows the threshold recommender and calibration table for its action type, and lists every
version with who changed what, each restorable (as a new version). Agent profiles carry the
kill switch, which goes through `set_autonomy_paused` so it is immediate and audited.
"""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from simple_history.admin import SimpleHistoryAdmin

from workflows.tools import ACTION_TYPES

from .actions import restore_policy_version, save_policy, set_autonomy_paused
from .models import (
    POLICY_PRECEDENCE,
    AgentProfile,
    Approval,
    AutonomyPolicy,
    CalibrationTarget,
    Decision,
    Escalation,
    Team,
)
from .policy import CompiledPolicy, WhatIfReport, current_policy_set, what_if
from .policy.effective import gate_rows, idle_numbers
from .recommender import Recommendation, derived_target, recommend_for

WHATIF_DEFAULT = 500
WHATIF_MAX = 5000


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin[Team]):
    list_display = ["name", "slug", "slack_channel"]
    filter_horizontal = ["members"]
    prepopulated_fields = {"slug": ["name"]}


# --- agents and the kill switch --------------------------------------------------------------


class AgentProfileForm(forms.ModelForm[AgentProfile]):
    kill_switch_reason = forms.CharField(
        required=False,
        max_length=500,
        help_text="Why autonomy is paused or resumed; kept in the agent's history.",
    )

    class Meta:
        model = AgentProfile
        fields = [
            "name",
            "agent_type",
            "description",
            "team",
            "trust_level",
            "customer_facing",
            "autonomy_paused",
        ]


@admin.register(AgentProfile)
class AgentProfileAdmin(SimpleHistoryAdmin):
    form = AgentProfileForm
    list_display = [
        "name",
        "agent_type",
        "team",
        "trust_level",
        "customer_facing",
        "autonomy_paused",
        "autonomy_paused_by",
        "autonomy_paused_at",
    ]
    list_filter = ["trust_level", "autonomy_paused", "team"]
    readonly_fields = ["autonomy_paused_at", "autonomy_paused_by", "autonomy_pause_reason"]
    fieldsets = [
        (None, {"fields": ["name", "agent_type", "description", "team", "customer_facing"]}),
        ("Trust", {"fields": ["trust_level"]}),
        (
            "Kill switch",
            {
                "description": "Pausing takes effect at once: the agent's next action goes to "
                "review, and its actions approved to run alone that have not run yet are "
                "held back for review. Every change is kept in History with who and why.",
                "fields": [
                    "autonomy_paused",
                    "kill_switch_reason",
                    "autonomy_paused_by",
                    "autonomy_paused_at",
                    "autonomy_pause_reason",
                ],
            },
        ),
    ]
    actions = ["pause_autonomy", "resume_autonomy"]
    history_list_display = ["trust_level", "autonomy_paused", "history_change_reason"]

    def save_model(
        self, request: HttpRequest, obj: AgentProfile, form: ModelForm[Any], change: bool
    ) -> None:
        user = request.user
        assert isinstance(user, User)
        wanted = obj.autonomy_paused
        if change and "autonomy_paused" in form.changed_data:
            # Everything else saves as usual; the switch goes through its audited action.
            obj.autonomy_paused = not wanted
            obj._history_user = user  # type: ignore[attr-defined]
            super().save_model(request, obj, form, change)
            set_autonomy_paused(
                agent_id=obj.pk,
                paused=wanted,
                by=user,
                reason=form.cleaned_data.get("kill_switch_reason", ""),
            )
            obj.refresh_from_db()
            return
        obj._history_user = user  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    @admin.action(description="Pause autonomy (kill switch)")
    def pause_autonomy(self, request: HttpRequest, queryset: QuerySet[AgentProfile]) -> None:
        self._switch(request, queryset, paused=True)

    @admin.action(description="Resume autonomy")
    def resume_autonomy(self, request: HttpRequest, queryset: QuerySet[AgentProfile]) -> None:
        self._switch(request, queryset, paused=False)

    def _switch(
        self, request: HttpRequest, queryset: QuerySet[AgentProfile], *, paused: bool
    ) -> None:
        user = request.user
        assert isinstance(user, User)
        names = []
        for agent in queryset:
            set_autonomy_paused(
                agent_id=agent.pk, paused=paused, by=user, reason="from the agent list"
            )
            names.append(agent.name)
        verb = "paused" if paused else "resumed"
        self.message_user(request, f"Autonomy {verb} for {', '.join(names)}.", messages.SUCCESS)


# --- policies ----------------------------------------------------------------------------------


def _whatif_limit(request: HttpRequest) -> int:
    try:
        return max(1, min(int(request.POST.get("whatif_limit", WHATIF_DEFAULT)), WHATIF_MAX))
    except ValueError:
        return WHATIF_DEFAULT


def _recommendations(action_type: str, agent_id: int | None = None) -> list[Recommendation]:
    """For a policy of one agent, that agent's recommendation (pooled towards the type when
    its evidence is thin); otherwise the action type's, across agents."""
    types = [action_type] if action_type in ACTION_TYPES else sorted(ACTION_TYPES)
    return [recommend_for(t, agent_id=agent_id) for t in types]


def _recommended_bar(request: HttpRequest) -> float | None:
    """The bar an "apply recommendation" link asks the form to be prefilled with."""
    try:
        value = float(request.GET.get("recommended", ""))
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


@admin.register(CalibrationTarget)
class CalibrationTargetAdmin(admin.ModelAdmin[CalibrationTarget]):
    """Without a row an action type's target is derived from its risk (the recommender's
    `derived_target`); a row here overrides it."""

    list_display = ["action_type", "target", "level", "derived", "note", "updated_at"]
    readonly_fields = ["updated_at", "derived"]

    @admin.display(description="derived default")
    def derived(self, obj: CalibrationTarget) -> str:
        if obj.action_type not in ACTION_TYPES:
            return "—"
        d = derived_target(obj.action_type)
        return f"{d.target:.2%} at {d.level:.0%} ({d.source})"

    def save_model(
        self, request: HttpRequest, obj: CalibrationTarget, form: ModelForm[Any], change: bool
    ) -> None:
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


class AutonomyPolicyForm(forms.ModelForm[AutonomyPolicy]):
    change_reason = forms.CharField(
        label="Why this change",
        required=False,
        max_length=100,
        help_text="Kept in the version history with your name: what evidence or incident made "
        "you change it. Required to save a change to an existing policy.",
    )

    class Meta:
        model = AutonomyPolicy
        fields = [
            f.name
            for f in AutonomyPolicy._meta.concrete_fields
            if f.editable and f.name not in {"id", "version", "updated_at"}
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        previewing = "_whatif" in self.data
        reason = (data.get("change_reason") or "").strip()
        if self.instance.pk is not None and not reason and not previewing:
            self.add_error("change_reason", "Say why you are changing this policy.")
        return data


def _gates(policy: AutonomyPolicy) -> dict[str, Any]:
    """The gate that applies for every agent and action type this policy covers."""
    policy_set = current_policy_set()
    compiled = policy_set.by_id.get(policy.pk) or CompiledPolicy.of(policy)
    rows = gate_rows(
        policy_set,
        workflow=policy.workflow,
        agent_ids=[policy.agent_id] if policy.agent_id else None,
        action_types=[policy.action_type] if policy.action_type else None,
    )
    idle = idle_numbers(compiled, rows) if policy.enabled else []
    return {"gate_rows": rows, "idle_numbers": idle}


@admin.register(AutonomyPolicy)
class AutonomyPolicyAdmin(SimpleHistoryAdmin):
    form = AutonomyPolicyForm
    list_display = [
        "name",
        "enabled",
        "priority",
        "scope",
        "outcome",
        "min_confidence",
        "max_amount",
        "team",
        "sla_minutes",
        "approvals_required",
        "version",
    ]
    list_filter = ["enabled", "outcome", "action_type"]
    list_select_related = ["agent", "team"]
    search_fields = ["name", "review_patterns", "block_patterns"]
    readonly_fields = ["version", "updated_at"]
    history_list_display = ["version", "history_change_reason"]
    fieldsets = [
        (
            "Scope",
            {
                "description": POLICY_PRECEDENCE,
                "fields": ["name", "enabled", "priority", "workflow", "agent", "action_type"],
            },
        ),
        (
            "Outcome and the conditions to act alone",
            {
                "fields": [
                    "outcome",
                    ("min_confidence", "min_confidence_probation", "min_confidence_trusted"),
                    "max_amount",
                    ("irreversible_requires_review", "irreversible_trusted_min_confidence"),
                    "review_patterns",
                    "block_patterns",
                    ("rate_limit_count", "rate_limit_window_minutes"),
                ]
            },
        ),
        (
            "Routing of what it escalates",
            {
                "fields": [
                    "team",
                    "sla_minutes",
                    "escalation_chain",
                    ("expiry_behaviour", "expiry_team"),
                    ("approvals_required", "approvals_required_above"),
                ]
            },
        ),
        (
            "Calibration: keeping the bar honest",
            {
                "description": "A random sample of what this policy lets run alone is judged "
                "by people (audits); the recommender and the drift test read those verdicts.",
                "fields": ["audit_rate", "tighten_on_drift"],
            },
        ),
        ("Version", {"fields": ["change_reason", "version", "updated_at"]}),
    ]

    @admin.display(description="scope")
    def scope(self, obj: AutonomyPolicy) -> str:
        parts = [
            obj.action_type or "any action",
            f"workflow {obj.workflow}" if obj.workflow else "",
            f"agent {obj.agent}" if obj.agent_id else "",
        ]
        return ", ".join(p for p in parts if p)

    def get_form(
        self,
        request: HttpRequest,
        obj: AutonomyPolicy | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[ModelForm[AutonomyPolicy]]:
        base: type[ModelForm[AutonomyPolicy]] = super().get_form(request, obj, change, **kwargs)
        recommended = _recommended_bar(request) if request.method == "GET" else None
        if recommended is not None and obj is not None:
            return self._prefilled_form(base, recommended)
        if request.method != "POST" or "_whatif" not in request.POST:
            return base
        limit = _whatif_limit(request)

        class WhatIfForm(base):  # type: ignore[valid-type,misc]
            """Validates the draft and previews it, and is never 'valid', so nothing saves
            and the admin shows the same bound form again."""

            whatif: WhatIfReport | None = None

            def is_valid(self) -> bool:
                if super().is_valid():
                    self.whatif = what_if(self.instance, limit=limit)
                return False

        return WhatIfForm

    @staticmethod
    def _prefilled_form(
        base: type[ModelForm[AutonomyPolicy]], bar: float
    ) -> type[ModelForm[AutonomyPolicy]]:
        """ "Apply recommendation": the form shows the recommended bar, not yet saved, with
        the what-if of that draft already run; the admin reads it and saves (or not)."""

        class PrefilledForm(base):  # type: ignore[valid-type,misc]
            whatif: WhatIfReport | None = None
            recommended_bar = bar

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.initial["min_confidence"] = bar
                draft = copy.copy(self.instance)
                draft.min_confidence = bar
                self.whatif = what_if(draft, limit=WHATIF_DEFAULT)

        return PrefilledForm

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, object_id) if object_id else None
        action_type = request.POST.get("action_type", "") if request.method == "POST" else ""
        if obj is not None and not action_type:
            action_type = obj.action_type
        context = {
            **(extra_context or {}),
            "precedence": POLICY_PRECEDENCE,
            "whatif_limit": _whatif_limit(request) if request.method == "POST" else WHATIF_DEFAULT,
            "recommendations": _recommendations(
                action_type, obj.agent_id if obj is not None else None
            ),
            "versions": self._versions(obj) if obj is not None else [],
            **(_gates(obj) if obj is not None else {}),
        }
        return super().changeform_view(request, object_id, form_url, context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "precedence": POLICY_PRECEDENCE,
            "recommendations": _recommendations(""),
        }
        return super().changelist_view(request, context)

    @staticmethod
    def _versions(obj: AutonomyPolicy) -> list[dict[str, Any]]:
        records = list(obj.history.order_by("-history_id")[:50])
        rows = []
        for i, record in enumerate(records):
            older = records[i + 1] if i + 1 < len(records) else None
            changes = []
            if older is not None:
                delta = record.diff_against(older, excluded_fields=["updated_at", "version"])
                changes = [f"{c.field}: {c.old!r} → {c.new!r}" for c in delta.changes]
            rows.append(
                {
                    "version": record.version,
                    "when": record.history_date,
                    "who": record.history_user.get_username() if record.history_user else "",
                    "reason": record.history_change_reason or "",
                    "changes": changes,
                    "current": record.version == obj.version,
                }
            )
        return rows

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "<int:object_id>/restore/<int:version>/",
                self.admin_site.admin_view(require_POST(self.restore_view)),
                name="escalations_autonomypolicy_restore",
            ),
        ]
        return custom + super().get_urls()

    def restore_view(self, request: HttpRequest, object_id: int, version: int) -> HttpResponse:
        policy = get_object_or_404(AutonomyPolicy, pk=object_id)
        if not self.has_change_permission(request, policy):
            raise PermissionDenied
        user = request.user
        assert isinstance(user, User)
        try:
            restored = restore_policy_version(policy_id=policy.pk, version=version, user=user)
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(
                request,
                f"Restored v{version} as v{restored.version}; actions already evaluated keep "
                "the version they were held to.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(
            reverse("admin:escalations_autonomypolicy_change", args=[policy.pk])
        )

    def save_model(
        self, request: HttpRequest, obj: AutonomyPolicy, form: ModelForm[Any], change: bool
    ) -> None:
        user = request.user
        reverting = "/history/" in request.path
        reason = (form.cleaned_data.get("change_reason") or "").strip()
        if reverting:
            reason = f"reverted from history: {reason}" if reason else "reverted from history"
        save_policy(
            policy=obj,
            user=user if isinstance(user, User) else None,
            reason=reason or ("created" if not change else ""),
        )


# --- escalations and decisions ------------------------------------------------------------------


class ApprovalInline(admin.TabularInline[Approval, Escalation]):
    model = Approval
    extra = 0
    can_delete = False
    readonly_fields = ["decided_by", "via", "reason", "created_at"]
    fields = ["decided_by", "via", "reason", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Escalation)
class EscalationAdmin(admin.ModelAdmin[Escalation]):
    list_display = [
        "id",
        "team",
        "status",
        "approvals_required",
        "sla_due_at",
        "hops",
        "created_at",
        "decided_at",
    ]
    list_filter = ["status", "team", "expiry_behaviour"]
    readonly_fields = [f.name for f in Escalation._meta.fields]
    inlines = [ApprovalInline]

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
