"""/api/v1/: the JSON API for agents outside Caliber. Each operation: token, access, one action.

Errors are `{"detail": "..."}`, or for bad fields `{"detail": [{"loc", "msg", "type"}]}` (422).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.params.functions import Query as QueryParam
from ninja.parser import Parser
from ninja.responses import Status

from escalations.access import escalations_for, get_escalation_for
from escalations.actions import AlreadyDecided, decide_escalation
from escalations.actions.decisions import (
    DeadlinePassed,
    NotAPerson,
    NotTheApprover,
    OwnEscalation,
    TooLateToUndo,
    undo_approval,
)
from escalations.models import ANSWERED, Decision, EscalationStatus, Verdict, Via, reported_status
from review.live import live_layer
from workflows.actions import record_outcome
from workflows.models import OutcomeQuality, OutcomeSource
from workflows.run_events import deliver_event
from workflows.specs import InvalidInput, UnknownWorkflow, get_spec
from workflows.tools import ToolError, get_action_type

from . import actions
from .access import get_action_for, get_run_for_token
from .auth import Throttled, TokenAuth, token_of
from .docs import SelfHostedSwagger
from .hooks import action_group
from .models import ApiToken
from .representations import (
    describe_action,
    describe_decision,
    describe_escalation,
    describe_outcome,
    describe_run,
)
from .schemas import (
    ActionIn,
    ActionOut,
    AlreadyDecidedOut,
    DecisionIn,
    Error,
    EscalationOut,
    EscalationPage,
    EscalationStatusOut,
    EventIn,
    EventOut,
    OutcomeIn,
    OutcomeOut,
    ResultIn,
    RunIn,
    RunOut,
    ValidationErrors,
)

log = logging.getLogger(__name__)

# A long-poll re-reads the database this often even when no wake-up message arrives.
LONG_POLL_RECHECK_SECONDS = 3.0
MAX_WAIT_SECONDS = 60.0


class StrictJSONParser(Parser):
    """JSON with no NaN or Infinity: PostgreSQL's jsonb cannot store them."""

    def parse_body(self, request: HttpRequest) -> Any:
        def refuse(name: str) -> None:
            raise ValueError(f"{name} is not valid JSON")

        return json.loads(request.body, parse_constant=refuse)


api = NinjaAPI(
    title="Caliber agent API",
    version="1",
    description=(
        "Put Caliber's autonomy policies and review desk in front of any agent's actions. "
        "Authenticate with `Authorization: Bearer <token>`."
    ),
    auth=TokenAuth(),
    urls_namespace="api-v1",
    docs=SelfHostedSwagger(),
    docs_url="/docs",
    openapi_url="/openapi.json",
    parser=StrictJSONParser(),
)

COMMON: dict[int, Any] = {400: Error, 401: Error, 413: Error, 422: ValidationErrors, 429: Error}


def max_body_bytes() -> int:
    """Bodies over this are refused with 413 before anything parses them."""
    return int(settings.API_MAX_BODY_BYTES)


def _too_large() -> JsonResponse:
    return JsonResponse(
        {"detail": f"The body is larger than {max_body_bytes()} bytes."}, status=413
    )


def _body_too_large(request: HttpRequest) -> bool:
    limit = max_body_bytes()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return True
    # The stream is bounded by the declared length (Django's LimitedStream), so once the
    # header passes, reading the body costs at most the limit.
    return declared > limit or len(request.body) > limit


def limit_body(run: Callable[..., Any]) -> Callable[..., Any]:
    """Runs before auth and parsing: an oversized body costs nothing but the refusal."""
    if inspect.iscoroutinefunction(run):

        @functools.wraps(run)
        async def async_run(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if request.method in ("POST", "PUT", "PATCH") and _body_too_large(request):
                return _too_large()
            return await run(request, *args, **kwargs)

        return async_run

    @functools.wraps(run)
    def sync_run(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method in ("POST", "PUT", "PATCH") and _body_too_large(request):
            return _too_large()
        return run(request, *args, **kwargs)

    return sync_run


api.add_decorator(limit_body, mode="view")


def _unprocessable(loc: list[str | int], msg: str) -> NinjaValidationError:
    return NinjaValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


@api.exception_handler(NinjaValidationError)
def _validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    # ninja puts the body parameter's own name in every body error's loc ("body", "body",
    # "confidence"); clients should see ("body", "confidence").
    errors = []
    for error in exc.errors:
        loc = list(error.get("loc", ()))
        if loc[:2] == ["body", "body"]:
            loc = loc[1:]
        errors.append({**error, "loc": loc})
    return api.create_response(request, {"detail": errors}, status=422)


@api.exception_handler(DjangoValidationError)
def _django_validation_error(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    if hasattr(exc, "error_dict"):
        errors = [
            {"loc": ["body", field], "msg": " ".join(messages), "type": "value_error"}
            for field, messages in exc.message_dict.items()
        ]
    else:
        errors = [{"loc": ["body"], "msg": " ".join(exc.messages), "type": "value_error"}]
    return api.create_response(request, {"detail": errors}, status=422)


@api.exception_handler(Throttled)
def _throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
    response = api.create_response(request, {"detail": str(exc)}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 401:
        response = api.create_response(
            request, {"detail": "Missing, invalid or revoked API token."}, status=401
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    response = api.create_response(request, {"detail": str(exc)}, status=exc.status_code)
    return response


def _reviewer_of(token: ApiToken) -> Any:
    if not token.reviewer or token.user is None:
        raise HttpError(403, "This token has no reviewer rights.")
    if not token.user.is_active:
        raise HttpError(403, f"{token.user.get_username()} may no longer decide.")
    return token.user


# --- actions ---------------------------------------------------------------------------------


@api.post(
    "/actions",
    response={200: ActionOut, 201: ActionOut, 403: Error, 409: Error, **COMMON},
    summary="Submit an action for approval",
    description="Held against the autonomy policies at once: `auto_approved`, `escalated` (a "
    "person decides; poll with `?wait=` or take the webhook) or `blocked`. 201 for a new "
    "action, 200 for the same idempotency key again; 409 if that key was used for a "
    "different action type or payload.",
    tags=["actions"],
)
def submit_action(request: HttpRequest, body: ActionIn) -> Status[Any]:
    token = token_of(request)
    if body.agent != token.agent.name:
        raise HttpError(403, f"This token acts for agent '{token.agent.name}' only.")
    try:
        get_action_type(body.action_type)
    except ToolError as exc:
        raise _unprocessable(["body", "action_type"], str(exc)) from None
    try:
        action, created = actions.submit_action(
            token=token,
            action_type=body.action_type,
            payload=body.payload,
            confidence=body.confidence,
            idempotency_key=body.idempotency_key,
            workflow=body.workflow,
            amount=body.amount,
            reversible=body.reversible,
            context=body.context,
            summary=body.summary,
        )
    except ToolError as exc:
        raise _unprocessable(["body", "payload"], str(exc)) from None
    except actions.IdempotencyConflict as exc:
        raise HttpError(409, str(exc)) from None
    return Status(201 if created else 200, describe_action(action))


@api.get(
    "/actions/{action_id}",
    response={200: ActionOut, 404: Error, **COMMON},
    summary="An action's status, decision and verdict; long-polls with ?wait=",
    description="With `wait` (seconds, up to 60) the answer comes as soon as the action is "
    "decided, or when the wait ends (then `decided` is false).",
    tags=["actions"],
)
async def get_action(
    request: HttpRequest,
    action_id: uuid.UUID,
    wait: float = QueryParam(0.0, ge=0.0, le=MAX_WAIT_SECONDS, allow_inf_nan=False),
) -> dict[str, Any]:
    token = token_of(request)
    view = await _read_action(token, action_id)
    if view["decided"] or wait <= 0:
        return view
    return await _wait_for_decision(token, action_id, wait)


@sync_to_async
def _read_action(token: ApiToken, action_id: uuid.UUID) -> dict[str, Any]:
    try:
        return describe_action(get_action_for(token, action_id))
    finally:
        # A long-poll reads again now and then for up to a minute: its thread gives the
        # connection back to the web pool (config.asgi) between reads, or every waiting
        # poll kept a slot no request could have (DB_POOL_MAX polls and the server 503s).
        if getattr(connection, "pool", None) is not None:
            connection.close()


async def _wait_for_decision(token: ApiToken, action_id: uuid.UUID, wait: float) -> dict[str, Any]:
    """Hold the request on the event loop, never a thread: woken by the decision's message
    on the layer api.hooks publishes it on (review.live's: with Redis its pub/sub layer, not
    the configured channel layer, where a poll heard nothing and answered only on its
    re-read), re-reading the database now and then in case a message is lost (pub/sub
    delivers at most once, and only to a subscription already in place)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    layer = live_layer()
    group = action_group(action_id)
    channel: str | None = None
    if layer is not None:
        try:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
        except Exception:
            log.warning("long-poll of %s falls back to polling the database", action_id)
            channel = None
    try:
        # Subscribed first, then read: a decision in between is not missed.
        view = await _read_action(token, action_id)
        while not view["decided"]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            step = min(remaining, LONG_POLL_RECHECK_SECONDS)
            if layer is not None and channel is not None:
                try:
                    await asyncio.wait_for(layer.receive(channel), step)
                except TimeoutError:
                    pass
                except Exception:
                    # A broken channel layer costs promptness, never the answer.
                    log.warning("long-poll of %s falls back to polling the database", action_id)
                    channel = None
            else:
                await asyncio.sleep(min(step, 0.5))
            view = await _read_action(token, action_id)
        return view
    finally:
        if layer is not None and channel is not None:
            try:
                await layer.group_discard(group, channel)
            except Exception:
                log.warning("could not leave %s", group)


@api.post(
    "/actions/{action_id}/result",
    response={200: ActionOut, 404: Error, 409: Error, **COMMON},
    summary="Report that the approved action ran (or failed), with its result",
    tags=["actions"],
)
def report_result(request: HttpRequest, action_id: uuid.UUID, body: ResultIn) -> dict[str, Any]:
    token = token_of(request)
    succeeded = body.status == "executed"
    if not succeeded and not body.error.strip():
        raise _unprocessable(["body", "error"], "Say what went wrong.")
    try:
        action = actions.record_action_result(
            token=token,
            action_id=action_id,
            succeeded=succeeded,
            result=body.result if succeeded else None,
            error=body.error.strip(),
        )
    except actions.ResultConflict as exc:
        raise HttpError(409, str(exc)) from None
    return describe_action(action)


# --- escalations (reviewer tokens) -----------------------------------------------------------


@api.get(
    "/escalations",
    response={200: EscalationPage, 403: Error, **COMMON},
    summary="Escalations this token's user may decide, oldest first",
    tags=["escalations"],
)
def list_escalations(
    request: HttpRequest,
    status: EscalationStatusOut | None = None,
    limit: int = QueryParam(50, ge=1, le=200),
    offset: int = QueryParam(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    user = _reviewer_of(token_of(request))
    qs = escalations_for(user)
    # `answered` and `rejected` are one stored status, told apart by the verdict.
    if status == ANSWERED:
        qs = qs.filter(status=EscalationStatus.REJECTED, decision__verdict=Verdict.RESPOND)
    elif status == EscalationStatus.REJECTED:
        qs = qs.filter(status=status).exclude(decision__verdict=Verdict.RESPOND)
    elif status is not None:
        qs = qs.filter(status=status)
    page = qs.select_related(
        "action", "action__agent", "team", "decision", "decision__decided_by"
    ).order_by("created_at", "pk")[offset : offset + limit]
    return {
        "items": [describe_escalation(e) for e in page],
        "count": qs.count(),
        "limit": limit,
        "offset": offset,
    }


@api.get(
    "/escalations/{escalation_id}",
    response={200: EscalationOut, 403: Error, 404: Error, **COMMON},
    summary="One escalation",
    tags=["escalations"],
)
def get_escalation(request: HttpRequest, escalation_id: uuid.UUID) -> dict[str, Any]:
    user = _reviewer_of(token_of(request))
    return describe_escalation(get_escalation_for(user, escalation_id))


@api.post(
    "/escalations/{escalation_id}/decision",
    response={201: EscalationOut, 403: Error, 404: Error, 409: AlreadyDecidedOut, **COMMON},
    summary="Approve (optionally with an edited payload), reject or respond",
    description="Exactly one decision wins, whatever the channel: a second gets 409 with the "
    "first. Rejecting or responding needs a reason; the agent is told. Only a reviewer token "
    "bound to a person decides, never one acting for the agent whose action it is (403); an "
    "approval after the SLA ran out is 409.",
    tags=["escalations"],
)
def decide(request: HttpRequest, escalation_id: uuid.UUID, body: DecisionIn) -> Status[Any]:
    token = token_of(request)
    user = _reviewer_of(token)
    escalation = get_escalation_for(user, escalation_id)
    try:
        decide_escalation(
            escalation_id=escalation.pk,
            user=user,
            verdict=Verdict(body.verdict),
            via=Via.API,
            reason=body.reason,
            edited_payload=body.edited_payload,
            agent_id=token.agent_id,
        )
    except (OwnEscalation, NotAPerson) as exc:
        raise HttpError(403, str(exc)) from None
    except DeadlinePassed as exc:
        raise HttpError(409, " ".join(exc.messages)) from None
    except AlreadyDecided as exc:
        decision = exc.decision
        return Status(
            409,
            {
                "detail": str(exc),
                "escalation_status": reported_status(
                    exc.escalation.status,
                    decision.verdict if isinstance(decision, Decision) else None,
                ),
                "decision": describe_decision(decision) if isinstance(decision, Decision) else None,
            },
        )
    return Status(201, describe_escalation(get_escalation_for(user, escalation.pk)))


@api.post(
    "/escalations/{escalation_id}/undo",
    response={200: EscalationOut, 403: Error, 404: Error, 409: Error, **COMMON},
    summary="Take back an approval while its action waits out its undo window",
    description="The browser's and Slack's Undo: an approved irreversible action runs only "
    "after its undo window; until then the person who approved it (or an admin) may take the "
    "approval back, through a reviewer token acting for them. Nothing runs, the escalation "
    "is open again, and the undo is in the run's trace. Once, whatever the channel: a second "
    "undo, or one after the window (the action ran or is running), is 409 and changes "
    "nothing. Never through a token of the agent whose action it is (403).",
    tags=["escalations"],
)
def undo(request: HttpRequest, escalation_id: uuid.UUID) -> dict[str, Any]:
    token = token_of(request)
    user = _reviewer_of(token)
    escalation = get_escalation_for(user, escalation_id)
    try:
        undo_approval(escalation_id=escalation.pk, user=user, via=Via.API, agent_id=token.agent_id)
    except (OwnEscalation, NotTheApprover) as exc:
        raise HttpError(403, str(exc)) from None
    except TooLateToUndo as exc:
        raise HttpError(409, f"Not undone: {exc}.") from None
    return describe_escalation(get_escalation_for(user, escalation.pk))


# --- runs and outcomes -----------------------------------------------------------------------


@api.post(
    "/runs",
    response={200: RunOut, 201: RunOut, 403: Error, 409: Error, **COMMON},
    summary="Start a run of a built-in workflow",
    description="The workflow must run as this token's agent, and `input` must fit the "
    "workflow's input schema (422 naming each bad field; nothing is started). 201 for a new "
    "run, 200 for the same idempotency key and body again; 409 if that key was used for "
    "another workflow or input.",
    tags=["runs"],
)
def create_run(request: HttpRequest, body: RunIn) -> Status[Any]:
    token = token_of(request)
    try:
        spec = get_spec(body.workflow)
    except UnknownWorkflow as exc:
        raise _unprocessable(["body", "workflow"], str(exc)) from None
    if spec.agent != token.agent.name:
        raise HttpError(
            403,
            f"Workflow '{spec.name}' runs as agent '{spec.agent}'; this token acts for "
            f"'{token.agent.name}'.",
        )
    try:
        run, created = actions.start_run_for_token(
            token=token, workflow=spec.name, input=body.input, idempotency_key=body.idempotency_key
        )
    except InvalidInput as exc:
        raise NinjaValidationError(
            [{**error, "loc": ["body", "input", *error["loc"]]} for error in exc.errors]
        ) from None
    except actions.RunKeyConflict as exc:
        raise HttpError(409, str(exc)) from None
    return Status(201 if created else 200, describe_run(run))


@api.get(
    "/runs/{run_id}",
    response={200: RunOut, 404: Error, **COMMON},
    summary="A run's status, state and actions",
    tags=["runs"],
)
def get_run(request: HttpRequest, run_id: uuid.UUID) -> dict[str, Any]:
    return describe_run(get_run_for_token(token_of(request), run_id))


@api.post(
    "/runs/{run_id}/events",
    response={202: EventOut, 404: Error, **COMMON},
    summary="Deliver an outside event to a run (the customer replied, a payment cleared)",
    description="Recorded in the run's state; steps waiting for this kind of event (the "
    "run's and its follow-up runs') wake now rather than at their deadline. A "
    "customer_replied event adds data.text to the conversation.",
    tags=["runs"],
)
def deliver_run_event(request: HttpRequest, run_id: uuid.UUID, body: EventIn) -> Status[Any]:
    token = token_of(request)
    run = get_run_for_token(token, run_id)
    try:
        delivered = deliver_event(
            run_id=run.pk,
            kind=body.kind,
            data=body.data,
            actor=token.actor,
            key=body.idempotency_key,
        )
    except DjangoValidationError as exc:
        field, errors = next(iter(exc.message_dict.items()))
        raise _unprocessable(["body", field], " ".join(errors)) from None
    return Status(
        202,
        {
            "run_id": run.pk,
            "kind": delivered.kind,
            "woke": delivered.woke,
            "duplicate": delivered.duplicate,
        },
    )


@api.post(
    "/outcomes",
    response={201: OutcomeOut, 404: Error, **COMMON},
    summary="Record what happened later to an action or a run",
    tags=["outcomes"],
)
def create_outcome(request: HttpRequest, body: OutcomeIn) -> Status[Any]:
    token = token_of(request)
    if body.action_id is None and body.run_id is None:
        raise _unprocessable(["body", "action_id"], "Name an action_id or a run_id.")
    action = get_action_for(token, body.action_id) if body.action_id else None
    run = get_run_for_token(token, body.run_id) if body.run_id else None
    if action is not None and run is not None and action.run_id != run.pk:
        raise _unprocessable(["body", "run_id"], "That action is not part of that run.")
    outcome = record_outcome(
        metric=body.metric,
        quality=OutcomeQuality(body.quality),
        source=OutcomeSource.API,
        action=action,
        run=run,
        value=body.value,
        note=body.note,
        data=body.data,
        recorded_by=token.actor,
    )
    return Status(201, describe_outcome(outcome))
