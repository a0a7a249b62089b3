"""The reviewer's pages. Each view: access helper, at most one action, render."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from config.celery import app as celery_app
from escalations.access import AnyUser, escalations_for, get_escalation_for
from escalations.actions import (
    AlreadyClaimed,
    AlreadyDecided,
    TooLateToUndo,
    claim_escalation,
    decide_escalation,
    decide_escalations,
    reassign_escalation,
    release_escalation,
    undo_approval,
)
from escalations.actions.bulk import MAX_BULK
from escalations.models import Decision, Escalation, Verdict, Via
from escalations.rendering import proposal_for_action, tree
from workflows.settle import undo_window_seconds
from workflows.tools import get_action_type

from .errors import bad_request
from .forms import EDIT, DecisionForm, ReassignForm
from .queue import (
    InvalidFilter,
    QueueFilters,
    load_row,
    queue_context,
    render_queue_note,
    render_row,
)
from .settlement import field_changes, revision_context, settlement_of, status_label


def _is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


def _queue_template(request: HttpRequest) -> str:
    # An htmx filter click swaps only the queue section; a history restore wants the page.
    if _is_htmx(request) and not request.htmx.history_restore_request:  # type: ignore[attr-defined]
        return "review/queue.html#queue"
    return "review/queue.html"


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    try:
        filters = QueueFilters.from_params(request.GET)
    except InvalidFilter as exc:
        return bad_request(request, str(exc))
    response = render(request, _queue_template(request), queue_context(request.user, filters))
    patch_vary_headers(response, ("HX-Request",))
    return response


def decision_panel_context(user: AnyUser, pk: uuid.UUID | str | None) -> dict[str, object]:
    """What the decision panel's live parts need: shared by the page and the consumer."""
    if pk is None:
        raise Http404("No such escalation")
    esc = get_escalation_for(user, pk)
    decision = Decision.objects.filter(escalation=esc).select_related("decided_by").first()
    return {
        "esc": esc,
        "decision": decision,
        "user": user,
        **_decision_extras(esc, decision, user),
    }


def _decision_extras(
    esc: Escalation, decision: Decision | None, user: AnyUser
) -> dict[str, object]:
    diff = None
    if decision is not None and decision.edited_payload is not None:
        diff = field_changes(esc.action.payload, decision.edited_payload)
    status_css, status_text = status_label(esc, decision)
    return {
        "diff": diff,
        "settlement": settlement_of(esc, decision, user),
        "status_css": status_css,
        "status_text": status_text,
    }


def _detail_context(request: HttpRequest, pk: uuid.UUID) -> dict[str, object]:
    ctx = decision_panel_context(request.user, pk)
    esc = ctx["esc"]
    assert isinstance(esc, Escalation)
    action = esc.action
    tool = get_action_type(action.action_type)
    run = action.run
    amount = action.payload.get(tool.amount_field) if tool.amount_field else None
    proposal = proposal_for_action(action)
    return {
        **ctx,
        "action": action,
        "tool": tool,
        "risk": esc.risk,
        "amount": amount,
        "run": run,
        "ticket": run.input if run is not None and isinstance(run.input, dict) else {},
        "proposal": proposal,
        "ticket_tree": tree(run.input) if run is not None else (),
        "revision": revision_context(action),
        # An audit of what already ran: judged right or wrong, nothing waits on it.
        "already_ran": esc.audits_what_ran,
        "trace": list(run.trace.all()) if run is not None else [],
        "steps": list(run.steps.all()) if run is not None else [],
        "state_json": json.dumps(run.state, indent=2, ensure_ascii=False) if run else "",
        "form": DecisionForm(payload=action.payload, tool=tool, proposal=proposal),
        "reassign_form": ReassignForm(exclude_team_id=esc.team_id),
    }


@login_required
@require_GET
def detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    return render(request, "review/detail.html", _detail_context(request, pk))


@login_required
@require_POST
def decide(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    esc = get_escalation_for(request.user, pk)
    tool = get_action_type(esc.action.action_type)
    proposal = proposal_for_action(esc.action)
    form = DecisionForm(request.POST, payload=esc.action.payload, tool=tool, proposal=proposal)
    if form.is_valid() and form.needs_confirmation and esc.is_undecided:
        # Irreversible: show what will run (and what changed) and ask once more.
        ctx = _detail_context(request, pk)
        edited = form.cleaned_data["edited"]
        ctx.update(
            form=form,
            confirming=True,
            confirm_verdict=EDIT if edited is not None else Verdict.APPROVE,
            confirm_digest=form.confirm_digest,
            confirm_diff=field_changes(esc.action.payload, edited) if edited is not None else None,
            confirm_proposal=proposal_for_action(esc.action, form.version_to_run),
        )
        return render(request, "review/detail.html", ctx)
    if form.is_valid():
        try:
            result = decide_escalation(
                escalation_id=esc.pk,
                user=request.user,  # type: ignore[arg-type]
                verdict=form.cleaned_data["verdict"],
                via=Via.WEB,
                reason=form.cleaned_data["reason"],
                edited_payload=form.cleaned_data["edited"],
            )
        except AlreadyDecided as exc:
            messages.info(request, f"Nothing changed: this escalation was {exc}.")
            return redirect("review:detail", pk=esc.pk)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        else:
            if isinstance(result, Decision):
                esc.action.refresh_from_db()
                messages.success(request, form.success_message(esc.action))
                if esc.action.execute_after is not None:
                    # Its page shows the countdown and the Undo button.
                    return redirect("review:detail", pk=esc.pk)
            else:
                # A quorum escalation: this approval counts, others are still needed.
                esc.refresh_from_db()
                missing = esc.approval_progress()["missing"]
                messages.success(
                    request, f"Your approval is recorded; {missing} more needed before it runs."
                )
            return redirect("review:queue")
    ctx = _detail_context(request, pk)
    ctx["form"] = form
    return render(request, "review/detail.html", ctx, status=400)


@login_required
@require_POST
def bulk_decide(request: HttpRequest) -> HttpResponse:
    """Approve or reject the rows a reviewer selected, with one reason; irreversible ones
    only after a confirmation page that shows each of them as it will run."""
    ids = request.POST.getlist("ids")
    verdict = request.POST.get("verdict", "")
    reason = request.POST.get("reason", "").strip()[:2000]
    if verdict not in (Verdict.APPROVE, Verdict.REJECT) or not ids:
        messages.info(request, "Select some rows first, then approve or reject them.")
        return redirect("review:queue")
    try:
        outcome = decide_escalations(
            escalation_ids=ids,
            user=request.user,  # type: ignore[arg-type]
            verdict=Verdict(verdict),
            via=Via.WEB,
            reason=reason,
            irreversible_confirmed=request.POST.get("confirm") == "irreversible",
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("review:queue")
    if outcome.needs_confirmation:
        irreversible = (
            Escalation.objects.filter(pk__in=outcome.needs_confirmation)
            .select_related("action", "action__run", "action__agent__team", "team")
            .order_by("created_at")
        )
        items = [
            (esc, proposal_for_action(esc.action), undo_window_seconds(esc.action.action_type))
            for esc in irreversible
        ]
        windows = {w for _, _, w in items}
        return render(
            request,
            "review/bulk_confirm.html",
            {
                "ids": ids,
                "reason": reason,
                "items": items,
                "count": len(ids),
                "others": len(ids) - len(items),
                # One figure when every type waits the same (the usual case).
                "window": windows.pop() if len(windows) == 1 else None,
            },
        )
    parts = []
    done = len(outcome.decided) + len(outcome.counted)
    word = "Approved" if verdict == Verdict.APPROVE else "Rejected"
    parts.append(f"{word} {done}")
    if outcome.counted:
        parts.append(f"{len(outcome.counted)} of them need more approvals")
    if outcome.already:
        parts.append(f"{len(outcome.already)} already decided by someone else")
    if outcome.refused:
        parts.append(f"{len(outcome.refused)} refused: {outcome.refused[0][1]}")
    messages.success(request, "; ".join(parts) + ".")
    waiting = _in_undo_window(outcome.decided) if verdict == Verdict.APPROVE else []
    if waiting:
        # As after a single approval: where the Undo is, while it still can be.
        return redirect(f"{reverse('review:bulk_done')}?{urlencode({'ids': waiting}, True)}")
    return redirect("review:queue")


def _in_undo_window(escalation_ids: list[str]) -> list[str]:
    now = timezone.now()
    return [
        str(pk)
        for pk in Escalation.objects.filter(
            pk__in=escalation_ids, action__execute_after__gt=now
        ).values_list("pk", flat=True)
    ]


@login_required
@require_GET
def bulk_done(request: HttpRequest) -> HttpResponse:
    """What became of the irreversible ones a bulk approval queued: each with its countdown
    and its Undo while the window lasts, then what happened to it ("Sent at 14:02")."""
    ids = []
    for raw in request.GET.getlist("ids")[:MAX_BULK]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            continue
    escalations = (
        escalations_for(request.user)
        .filter(pk__in=ids)
        .select_related("action", "action__run", "action__agent__team", "team")
        .order_by("created_at")
    )
    decisions = {
        d.escalation_id: d
        for d in Decision.objects.filter(escalation__in=escalations).select_related("decided_by")
    }
    items = [
        (
            esc,
            proposal_for_action(esc.action),
            settlement_of(esc, decisions.get(esc.pk), request.user),
        )
        for esc in escalations
    ]
    return render(request, "review/bulk_done.html", {"items": items})


def _claim_response(request: HttpRequest, pk: uuid.UUID, note: str = "") -> HttpResponse:
    if _is_htmx(request) and request.POST.get("from") == "queue":
        # From the queue page: its row and its note, not the detail page's panel (whose
        # targets the queue does not have: htmx:oobErrorNoTarget, and nothing happened).
        get_escalation_for(request.user, pk)
        row = load_row(str(pk))
        html = render_row(row, user=request.user, oob=True) if row is not None else ""
        return HttpResponse(html + render_queue_note(note or "Claimed."))
    if _is_htmx(request):
        ctx = decision_panel_context(request.user, pk)
        # Swapped out of band, like the consumer's push of the same change.
        return render(request, "review/detail.html#pushed", {**ctx, "note": note, "oob": True})
    if note:
        messages.info(request, note)
    return redirect("review:detail", pk=pk)


@login_required
@require_POST
def claim(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    try:
        claim_escalation(escalation_id=pk, user=request.user)  # type: ignore[arg-type]
    except (AlreadyClaimed, AlreadyDecided) as exc:
        return _claim_response(request, pk, f"Not claimed: this escalation was {exc}.")
    return _claim_response(request, pk)


@login_required
@require_POST
def release(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    try:
        release_escalation(escalation_id=pk, user=request.user)  # type: ignore[arg-type]
    except (AlreadyClaimed, AlreadyDecided) as exc:
        return _claim_response(request, pk, f"Not released: this escalation was {exc}.")
    return _claim_response(request, pk)


@login_required
@require_POST
def reassign(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    esc = get_escalation_for(request.user, pk)
    form = ReassignForm(request.POST, exclude_team_id=esc.team_id)
    if form.is_valid():
        team = form.cleaned_data["team"]
        try:
            reassign_escalation(
                escalation_id=esc.pk,
                user=request.user,  # type: ignore[arg-type]
                team_id=team.pk,
                note=form.cleaned_data["note"],
            )
        except AlreadyDecided as exc:
            messages.info(request, f"Nothing changed: this escalation was {exc}.")
            return redirect("review:detail", pk=esc.pk)
        except ValidationError as exc:
            for error in exc.messages:
                form.add_error(None, error)
        else:
            messages.success(
                request, f"Handed to {team.name}; it left your queue if you are not on it."
            )
            return redirect("review:queue")
    ctx = _detail_context(request, pk)
    ctx["reassign_form"] = form
    return render(request, "review/detail.html", ctx, status=400)


@login_required
@require_POST
def undo(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    try:
        undo_approval(escalation_id=pk, user=request.user, via=Via.WEB)  # type: ignore[arg-type]
    except TooLateToUndo as exc:
        messages.info(request, f"Not undone: {exc}.")
    else:
        messages.success(request, "Undone: nothing was sent. It is back in the queue.")
    if _is_htmx(request):
        # The whole page changes (the decision form is back): htmx reloads it.
        return HttpResponse(status=204, headers={"HX-Refresh": "true"})
    return redirect("review:detail", pk=pk)


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
        with celery_app.connection_for_write() as conn:
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
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded", "mode": mode, **checks}
    pool = getattr(connection, "pool", None)
    if pool is not None:
        # This process's web pool (config.asgi): a connection never given back shows here as
        # in_use creeping up between requests (this request holds one of them itself).
        stats = pool.get_stats()
        body["database_pool"] = {
            "max": stats["pool_max"],
            "open": stats["pool_size"],
            "in_use": stats["pool_size"] - stats["pool_available"],
            "waiting": stats.get("requests_waiting", 0),
        }
    return JsonResponse(body, status=200 if healthy else 503)
