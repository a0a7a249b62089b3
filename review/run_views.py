"""The runs pages: every run's plan, steps, state versions and trace; admins retry failed
runs, roll state back and cancel runs from here. Each view: access helper, one action."""

from __future__ import annotations

import json
import uuid

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from escalations.access import get_run_for, runs_for, sees_everything
from workflows.actions import InvalidTransition, cancel_run, retry_run, rollback_run
from workflows.models import RunSnapshot, RunStatus, WorkflowRun
from workflows.specs import all_specs

SNAPSHOTS_SHOWN = 200


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, strip=True)


class RollbackForm(ReasonForm):
    version = forms.IntegerField(min_value=1)


def _get_run_for_admin(request: HttpRequest, pk: uuid.UUID) -> WorkflowRun:
    """404 for a run the user may not see; 403 for a reviewer: operating runs is for admins."""
    run = get_run_for(request.user, pk)
    if not sees_everything(request.user):
        raise PermissionDenied("Only admins operate runs.")
    return run


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    workflow = request.GET.get("workflow", "")
    qs = runs_for(request.user).distinct().select_related("agent").order_by("-created_at")
    if status in RunStatus.values:
        qs = qs.filter(status=status)
    workflows = sorted({s.name for s in all_specs()})
    if workflow in workflows:
        qs = qs.filter(workflow=workflow)
    return render(
        request,
        "review/run_list.html",
        {
            "runs": qs[:200],
            "status": status,
            "statuses": RunStatus.choices,
            "workflow": workflow,
            "workflows": workflows,
        },
    )


def _detail_context(request: HttpRequest, run: WorkflowRun) -> dict[str, object]:
    steps = list(run.steps.all())
    by_name = {s.name: s for s in steps}
    levels = [
        [{"entry": entry, "step": by_name.get(entry["name"])} for entry in level]
        for level in run.plan_levels()
    ]
    snapshots = list(
        RunSnapshot.objects.filter(run=run)
        .order_by("-version")
        .only(
            "version", "changed", "step_name", "reason", "actor", "digest", "anchor", "created_at"
        )[:SNAPSHOTS_SHOWN]
    )
    shown_version = request.GET.get("v", "")
    shown = None
    if shown_version.isdigit():
        shown = RunSnapshot.objects.filter(run=run, version=int(shown_version)).first()
    state = shown.data() if shown is not None else run.state
    return {
        "run": run,
        "steps": steps,
        "levels": levels,
        "actions": list(run.actions.select_related("escalation").all()),
        "snapshots": snapshots,
        "shown": shown,
        "state_json": json.dumps(state, indent=2, ensure_ascii=False, sort_keys=True),
        "dead_letters": list(run.dead_letters.all()),
        "effects": list(run.effects.order_by("created_at")),
        "children": list(run.children.order_by("created_at")),
        "trace": list(run.trace.all()),
        "is_admin": sees_everything(request.user),
        "can_retry": run.status == RunStatus.FAILED,
        "can_cancel": not run.is_terminal,
        "can_rollback": run.status != RunStatus.CANCELLED and run.durable and len(snapshots) > 1,
    }


@login_required
@require_GET
def run_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    run = get_run_for(request.user, pk)
    return render(request, "review/run_detail.html", _detail_context(request, run))


def _refused(request: HttpRequest, run: WorkflowRun, exc: Exception) -> HttpResponse:
    if isinstance(exc, ValidationError):
        text = "; ".join(m for msgs in exc.message_dict.values() for m in msgs)
    else:
        text = str(exc)
    messages.error(request, f"Nothing changed: {text}")
    return redirect("runs:detail", pk=run.pk)


@login_required
@require_POST
def run_retry(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    run = _get_run_for_admin(request, pk)
    form = ReasonForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        retry_run(run_id=run.pk, actor=request.user.get_username(), reason=reason)
    except InvalidTransition as exc:
        return _refused(request, run, exc)
    messages.success(request, "Retrying: the failed steps have fresh attempts.")
    return redirect("runs:detail", pk=run.pk)


@login_required
@require_POST
def run_rollback(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    run = _get_run_for_admin(request, pk)
    form = RollbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing changed: choose a version and give a reason.")
        return redirect("runs:detail", pk=run.pk)
    try:
        rollback_run(
            run_id=run.pk,
            to_version=form.cleaned_data["version"],
            actor=request.user.get_username(),
            reason=form.cleaned_data["reason"],
        )
    except (InvalidTransition, ValidationError) as exc:
        return _refused(request, run, exc)
    messages.success(request, f"Rolled back to state v{form.cleaned_data['version']}.")
    return redirect("runs:detail", pk=run.pk)


@login_required
@require_POST
def run_cancel(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    run = _get_run_for_admin(request, pk)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing changed: say why the run is cancelled.")
        return redirect("runs:detail", pk=run.pk)
    try:
        cancel_run(
            run_id=run.pk, actor=request.user.get_username(), reason=form.cleaned_data["reason"]
        )
    except (InvalidTransition, ValidationError) as exc:
        return _refused(request, run, exc)
    messages.success(request, "Run cancelled.")
    return redirect("runs:detail", pk=run.pk)
