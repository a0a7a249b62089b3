"""Request and response shapes of /api/v1/ (pydantic via django-ninja; they make the schema)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import AfterValidator

MAX_JSON_DEPTH = 32


def _check_text(value: str) -> str:
    # PostgreSQL refuses NUL in text and jsonb, and a lone surrogate cannot be encoded:
    # both would otherwise surface as a 500 deep inside the database driver.
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key))
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _checked_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


Text = Annotated[str, AfterValidator(_check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_checked_object)]


# Statuses as the API reports them: the stored ones, and `answered` for a Respond (a person
# answered the agent in words instead of approving or rejecting; escalations.models.ANSWERED).
ActionStatusOut = Literal[
    "proposed",
    "auto_approved",
    "escalated",
    "approved",
    "rejected",
    "answered",
    "blocked",
    "executed",
    "failed",
]
EscalationStatusOut = Literal[
    "open", "claimed", "approved", "rejected", "answered", "expired", "cancelled"
]
VerdictOut = Literal["approve", "reject", "respond"]


class Error(Schema):
    detail: str


class FieldError(Schema):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrors(Schema):
    detail: list[FieldError]


# --- actions ---------------------------------------------------------------------------------


class ActionIn(Schema):
    agent: Text = Field(..., min_length=1, max_length=100, description="The token's agent.")
    action_type: Text = Field(..., min_length=1, max_length=100, description="A declared type.")
    payload: JsonObject = Field(..., description="What the action would do (a JSON object).")
    confidence: float = Field(..., ge=0.0, le=1.0, allow_inf_nan=False)
    idempotency_key: Text = Field(
        ...,
        min_length=1,
        max_length=150,
        description="Unique per agent: the same key returns the same action, never a second.",
    )
    amount: Decimal | None = Field(
        None, max_digits=14, decimal_places=2, allow_inf_nan=False, description="Money at stake."
    )
    reversible: bool | None = Field(
        None, description="False makes a declared-reversible type count as irreversible."
    )
    context: JsonObject | None = Field(None, description="Anything the reviewer should see.")
    summary: Text = Field("", max_length=2000, description="One line for the reviewer.")
    workflow: Text = Field(
        "", max_length=100, description="Your workflow's name, to scope policies to it."
    )


class PolicyDecisionOut(Schema):
    outcome: str
    reasons: list[str]
    policy_version: int | None


class ActionOut(Schema):
    id: uuid.UUID
    agent: str
    action_type: str
    status: ActionStatusOut = Field(
        ...,
        description="Where it stands. `answered`: a person answered the agent (Respond) "
        "instead of approving or rejecting it; it does not run, `reason` is the answer.",
    )
    decided: bool = Field(..., description="Policy or a person has settled it.")
    payload: dict[str, Any]
    payload_to_execute: dict[str, Any] = Field(
        ..., description="What to run: the reviewer's edited payload, else the payload."
    )
    confidence: float
    summary: str
    idempotency_key: str
    workflow: str
    amount: Decimal | None
    reversible: bool | None
    context: dict[str, Any]
    run_id: uuid.UUID | None
    decision: PolicyDecisionOut
    escalation_id: uuid.UUID | None
    escalation_status: EscalationStatusOut | None
    verdict: VerdictOut | None = Field(..., description="The person's verdict.")
    reason: str
    edited_payload: dict[str, Any] | None
    decided_by: str | None
    decided_via: str | None
    decided_at: datetime | None
    result: dict[str, Any] | None
    error: str
    created_at: datetime
    executed_at: datetime | None


class ResultIn(Schema):
    status: Literal["executed", "failed"]
    result: JsonObject | None = Field(None, description="What running it produced.")
    error: Text = Field("", max_length=5000, description="Required when status is failed.")


# --- escalations -----------------------------------------------------------------------------


class DecisionOut(Schema):
    verdict: VerdictOut
    reason: str
    edited_payload: dict[str, Any] | None
    decided_by: str
    via: str
    decided_at: datetime


class EscalationActionOut(Schema):
    id: uuid.UUID
    agent: str
    action_type: str
    payload: dict[str, Any]
    confidence: float
    summary: str
    status: ActionStatusOut
    run_id: uuid.UUID | None


class EscalationOut(Schema):
    id: uuid.UUID
    status: EscalationStatusOut = Field(
        ..., description="`answered`: decided by a Respond (the agent was answered in words)."
    )
    team: str
    summary: str
    reasons: list[str]
    created_at: datetime
    sla_due_at: datetime | None
    decided_at: datetime | None
    action: EscalationActionOut
    decision: DecisionOut | None


class EscalationPage(Schema):
    items: list[EscalationOut]
    count: int
    limit: int
    offset: int


class DecisionIn(Schema):
    verdict: Literal["approve", "reject", "respond"]
    reason: Text = Field("", max_length=5000, description="Required to reject or respond.")
    edited_payload: JsonObject | None = Field(None, description="Approve this instead.")


class AlreadyDecidedOut(Schema):
    detail: str
    escalation_status: EscalationStatusOut
    decision: DecisionOut | None


# --- runs and outcomes ------------------------------------------------------------------------


class RunIn(Schema):
    workflow: Text = Field(..., min_length=1, max_length=100)
    input: JsonObject = Field(
        ..., description="Checked against the workflow's input schema (422 if it does not fit)."
    )
    idempotency_key: Text | None = Field(
        None,
        min_length=1,
        max_length=150,
        description="Unique per agent: the same key and body return the same run (200), never "
        "a second; the same key with another body is 409. Send one, and reuse it on retry.",
    )


class RunActionOut(Schema):
    id: uuid.UUID
    action_type: str
    status: ActionStatusOut
    escalation_id: uuid.UUID | None


class RunOut(Schema):
    id: uuid.UUID
    workflow: str
    workflow_version: int
    agent: str
    status: str
    input: dict[str, Any]
    state: dict[str, Any]
    error: str
    created_at: datetime
    finished_at: datetime | None
    actions: list[RunActionOut]


class EventIn(Schema):
    kind: Text = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_.-]{0,63}$",
        description="What happened, e.g. customer_replied (needs data.text), payment_cleared.",
    )
    data: JsonObject | None = Field(None, description="The event's details (a JSON object).")
    idempotency_key: Text = Field(
        "",
        max_length=150,
        description="The same key delivered again records and wakes nothing a second time.",
    )


class EventOut(Schema):
    run_id: uuid.UUID
    kind: str
    woke: int = Field(..., description="Waiting steps woken (the run's and its follow-ups').")
    duplicate: bool = Field(..., description="This key was delivered before: nothing changed.")


class OutcomeIn(Schema):
    action_id: uuid.UUID | None = None
    run_id: uuid.UUID | None = None
    metric: Text = Field(..., min_length=1, max_length=100, description="e.g. customer_replied")
    quality: Literal["good", "bad", "neutral"]
    value: float | None = Field(None, allow_inf_nan=False)
    note: Text = Field("", max_length=5000)
    data: JsonObject | None = None


class OutcomeOut(Schema):
    id: int
    action_id: uuid.UUID | None
    run_id: uuid.UUID | None
    metric: str
    quality: str
    value: float | None
    source: str
    note: str
    data: dict[str, Any]
    recorded_by: str
    recorded_at: datetime
