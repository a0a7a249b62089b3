"""The reviewer's pages. Each view: access helper, at most one action, render."""

from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from escalations.access import get_escalation_for, get_run_for, runs_for
from escalations.actions import AlreadyDecided, decide_escalation
from escalations.models import Decision, Via
from workflows.models import RunStatus
from workflows.tools import get_action_type

from .forms import DecisionForm
from .queue import QUEUE_LIMIT, open_escalations


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    qs = open_escalations(request.user)
    return render(
        request,
        "review/queue.html",
        {"escalations": qs[:QUEUE_LIMIT], "open_count": qs.count()},
    )


def _detail_context(request: HttpRequest, pk: uuid.UUID) -> dict[str, object]:
    esc = get_escalation_for(request.user, pk)
    action = esc.action
    decision = Decision.objects.filter(escalation=esc).select_related("decided_by").first()
    run = action.run
    return {
        "esc": esc,
        "action": action,
        "tool": get_action_type(action.action_type),
        "run": run,
        "decision": decision,
        "payload_json": json.dumps(action.payload, indent=2, ensure_ascii=False),
        "trace": list(run.trace.all()) if run is not None else [],
    }


@login_required
@require_GET
def detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    ctx = _detail_context(request, pk)
    ctx["form"] = DecisionForm()
    return render(request, "review/detail.html", ctx)


@login_required
@require_POST
def decide(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    esc = get_escalation_for(request.user, pk)
    form = DecisionForm(request.POST)
    if form.is_valid():
        try:
            decide_escalation(
                escalation_id=esc.pk,
                user=request.user,  # type: ignore[arg-type]
                verdict=form.cleaned_data["verdict"],
                via=Via.WEB,
                reason=form.cleaned_data["reason"],
                edited_payload=form.cleaned_data["edited_payload"],
            )
        except AlreadyDecided as exc:
            messages.info(request, f"This escalation was {exc}.")
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        else:
            messages.success(request, "Decision recorded; the run resumes.")
            return redirect("review:queue")
    if form.errors:
        ctx = _detail_context(request, pk)
        ctx["form"] = form
        return render(request, "review/detail.html", ctx, status=400)
    return redirect("review:detail", pk=esc.pk)


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    qs = runs_for(request.user).distinct().select_related("agent").order_by("-created_at")
    if status in RunStatus.values:
        qs = qs.filter(status=status)
    return render(
        request,
        "review/run_list.html",
        {"runs": qs[:200], "status": status, "statuses": RunStatus.choices},
    )


@login_required
@require_GET
def run_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    run = get_run_for(request.user, pk)
    return render(
        request,
        "review/run_detail.html",
        {
            "run": run,
            "steps": list(run.steps.all()),
            "actions": list(run.actions.select_related("escalation").all()),
            "trace": list(run.trace.all()),
        },
    )


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        from config.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("no channel layer")
        async_to_sync(layer.new_channel)()
        checks["channel_layer"] = "ok"
    except Exception as exc:
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    mode = "embedded" if settings.EMBEDDED else "scale-out"
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", "mode": mode, **checks},
        status=200 if healthy else 503,
    )
