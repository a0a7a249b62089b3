"""/metrics/: the dashboard; /metrics/prometheus: the scrape endpoint."""

from __future__ import annotations

import hmac
import uuid
from datetime import datetime, time, timedelta
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from escalations.access import get_action_for, team_ids_for
from escalations.models import AgentProfile, Decision
from escalations.policy import current_policy_set
from escalations.policy.effective import GateRow, gate_rows
from escalations.recommender import Recommendation, recommend_for
from workflows.actions import record_outcome
from workflows.models import OutcomeQuality, OutcomeSource, PolicyOutcome
from workflows.specs import all_specs
from workflows.tools import ACTION_TYPES

from . import queries
from .charts import calibration_chart, line_chart
from .models import AlertIncident
from .prometheus import exposition

PERIODS = {"1": 1, "7": 7, "30": 30, "90": 90}
DEFAULT_PERIOD = "7"


class FilterForm(forms.Form):
    period = forms.ChoiceField(
        choices=[(k, f"last {v} day{'s' if v > 1 else ''}") for k, v in PERIODS.items()],
        required=False,
        initial=DEFAULT_PERIOD,  # what an unfiltered page shows, so the select says so
    )
    workflow = forms.CharField(required=False, max_length=100)
    agent = forms.ModelChoiceField(
        queryset=AgentProfile.objects.all(), required=False, empty_label="any agent"
    )
    action_type = forms.ChoiceField(
        required=False, choices=[("", "any action type")] + [(n, n) for n in sorted(ACTION_TYPES)]
    )

    def clean_workflow(self) -> str:
        value = self.cleaned_data.get("workflow") or ""
        if value and value not in {s.name for s in all_specs()}:
            raise forms.ValidationError(f"no workflow named {value!r}")
        return value


def _scope(request: HttpRequest, form: FilterForm) -> queries.Scope:
    data = form.cleaned_data if form.is_valid() else {}
    days = PERIODS[data.get("period") or DEFAULT_PERIOD]
    now = timezone.now()
    since = timezone.make_aware(datetime.combine((now - timedelta(days=days - 1)).date(), time()))
    teams = team_ids_for(request.user)
    agent = data.get("agent")
    return queries.Scope(
        since=since,
        until=now,
        workflow=data.get("workflow") or "",
        agent_id=agent.pk if agent else None,
        action_type=data.get("action_type") or "",
        team_ids=None if teams is None else tuple(teams),
    )


def _gates(scope: queries.Scope) -> list[GateRow]:
    """The gate that applies to each agent in scope (escalations/policy/effective.py): the
    threshold a person tunes is shown only where it is the one that decides."""
    policy_set = current_policy_set()
    agent_ids = [
        a.id
        for a in policy_set.agents.values()
        if (scope.agent_id is None or a.id == scope.agent_id)
        and (scope.team_ids is None or a.team_id in scope.team_ids)
    ]
    return gate_rows(
        policy_set,
        workflow=scope.workflow,
        agent_ids=agent_ids,
        action_types=[scope.action_type] if scope.action_type else None,
    )


RECOMMENDATION_TTL = 60


def _recommendation(action_type: str, stamp: int | None) -> Recommendation:
    """The recommender's answer, recomputed when a person decides something new and at least
    once a minute (its population, the latest actions of the type, moves with every action)."""
    key = f"metrics:recommendation:{action_type}:{stamp}"
    cached = cache.get(key)
    if cached is None:
        cached = recommend_for(action_type)
        cache.set(key, cached, RECOMMENDATION_TTL)
    return cast(Recommendation, cached)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    if params and not params.get("period"):
        params["period"] = DEFAULT_PERIOD  # filtering by agent alone keeps the default period
    form = FilterForm(params or None)
    if request.GET and not form.is_valid():
        return render(request, "metrics/dashboard.html", {"form": form}, status=400)
    scope = _scope(request, form)
    runs = queries.run_figures(scope)
    by = queries.breakdowns(scope)
    trend = queries.daily_trend(scope)
    labels = [row["day"].strftime("%b %d") for row in trend]
    calibration = []
    stamp = Decision.objects.aggregate(last=Max("pk"))["last"]
    gates = _gates(scope)
    for action_type, bins in queries.calibration(scope).items():
        applying = [row.current for row in gates if row.action_type == action_type]
        # The chart's line: the bar that decides, when one agent's gate is a bar at all.
        thresholds = {g.threshold for g in applying if g.outcome == PolicyOutcome.AUTO}
        threshold = thresholds.pop() if len(thresholds) == 1 else None
        calibration.append(
            {
                "action_type": action_type,
                "bins": bins,
                "chart": calibration_chart(bins, threshold=threshold),
                "threshold": threshold,
                "gates": applying,
                "recommendation": _recommendation(action_type, stamp),
            }
        )
    return render(
        request,
        "metrics/dashboard.html",
        {
            "form": form,
            "scope": scope,
            "runs": runs,
            "actions": queries.action_figures(scope),
            "decisions": queries.decision_figures(scope),
            "sla": queries.sla_figures(scope, timezone.now()),
            "cost": queries.cost_figures(scope, runs["succeeded"]),
            "trend_chart": line_chart(
                [
                    ("completion", [r["completion_rate"] for r in trend]),
                    ("escalation", [r["escalation_rate"] for r in trend]),
                    ("approval", [r["approval_rate"] for r in trend]),
                ],
                labels,
                title="rates per day",
            ),
            "volume_chart": line_chart(
                [
                    ("runs", [float(r["runs"]) for r in trend]),
                    ("decisions", [float(r["decisions"]) for r in trend]),
                ],
                labels,
                percent=False,
                title="volume per day",
            ),
            "by_type": by["action_type"],
            "by_agent": by["agent"],
            "by_workflow": by["workflow"],
            "calibration": calibration,
            "gates": gates,
            "failures": queries.failure_cases(scope),
            "outcomes": queries.outcome_quality(scope),
            "autonomous": queries.recent_autonomous_actions(scope),
            "incidents": AlertIncident.objects.filter(closed_at__isnull=True).select_related(
                "rule", "rule__agent"
            )[:20],
        },
    )


@login_required
@require_POST
def judge_action(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """A reviewer marks a past autonomous action as wrong (or right): an outcome."""
    action = get_action_for(request.user, pk)
    quality = request.POST.get("quality", "")
    if quality not in (OutcomeQuality.GOOD, OutcomeQuality.BAD):
        messages.error(request, "Say whether the action was right or wrong.")
        return redirect("metrics:dashboard")
    user = request.user
    assert isinstance(user, User)
    record_outcome(
        action=action,
        metric="judged_by_reviewer",
        quality=OutcomeQuality(quality),
        source=OutcomeSource.REVIEWER,
        note=request.POST.get("note", "")[:1000],
        recorded_by=user.get_username(),
    )
    messages.success(
        request,
        f"Recorded: {action.action_type} was "
        f"{'right' if quality == OutcomeQuality.GOOD else 'wrong'}.",
    )
    return redirect("metrics:dashboard")


def _authorised_scraper(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())
    user: Any = request.user
    return bool(user.is_authenticated and user.is_staff)


@never_cache
@require_GET
def prometheus(request: HttpRequest) -> HttpResponse:
    if not _authorised_scraper(request):
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="caliber-metrics"'
        return response
    return HttpResponse(exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")
