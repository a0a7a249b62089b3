"""Escalating an action to people, and recording their one decision on it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone

from workflows import hotsql, rows
from workflows.actions import record_trace
from workflows.models import (
    Action,
    ActionStatus,
    Effect,
    RunStatus,
    TraceEvent,
    TraceKind,
    WorkflowRun,
)
from workflows.settle import lock_run, record_decision, record_undo, resumes_at_once
from workflows.tools import ACTION_TYPES, ToolError, get_action_type

from .. import notify
from ..access import escalations_for, get_escalation_for, sees_everything
from ..models import (
    UNDECIDED_STATUSES,
    Approval,
    Decision,
    Escalation,
    EscalationKind,
    EscalationStatus,
    ExpiryBehaviour,
    Team,
    Verdict,
    Via,
    reported_status,
)
from ..policy import amount_of, policy_as_evaluated
from ..rendering import card_for_action
from ..risk import DUE_WITHOUT_SLA, grade_risk
from ..search import search_text_for_action
from ..summary import first_summary
from .summaries import want_summary


def trace_escalation(
    action: Action,
    escalation: Escalation,
    message: str,
    *,
    kind: TraceKind,
    actor: str,
    **data: object,
) -> None:
    """Record `message` on the run of the escalated `action` (if it has a run), the row
    carrying the escalation's id beside `data`."""
    if action.run_id is not None:
        record_trace(
            run_id=action.run_id,
            kind=kind,
            step_name=action.step_name,
            actor=actor,
            message=message,
            data={"escalation": str(escalation.pk), **data},
        )


class AlreadyDecided(Exception):
    """Someone (or something) got there first; `escalation` says who and how."""

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        decision = (
            Decision.objects.filter(escalation=escalation).select_related("decided_by").first()
        )
        self.decision = decision
        if decision is not None:
            status = reported_status(escalation.status, decision.verdict)
            msg = (
                f"already {status} by {decision.decided_by} via {decision.via} "
                f"at {decision.created_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        else:
            msg = f"already {escalation.status}"
        super().__init__(msg)


class NotAPerson(PermissionDenied):
    """Only people decide: service accounts never, the system user only as the SLA's expiry."""


class OwnEscalation(PermissionDenied):
    """The agent whose action is escalated may not decide it, whatever its token says."""


class DeadlinePassed(ValidationError):
    """An approval arrived after the SLA ran out: the escalation now goes where its policy
    says (down the chain or its expiry behaviour), even if the sweep has not run yet."""

    def __init__(self, escalation: Escalation) -> None:
        due = escalation.sla_due_at
        super().__init__(
            {
                "verdict": f"Too late to approve: the SLA ran out at {due:%Y-%m-%d %H:%M:%S} "
                "UTC, so it follows the policy's escalation path."
            }
        )
        self.escalation = escalation


# What the database says when it refuses a service account's verdict (migration 0009's
# triggers): asking it there costs no query on the hot path every channel shares.
REFUSED_BY_THE_DATABASE = "decisions are made by people"


def _refused_decider(exc: IntegrityError, user: User) -> NotAPerson | None:
    if REFUSED_BY_THE_DATABASE in str(exc):
        return NotAPerson(f"{user.get_username()} is a service account; only people decide.")
    return None


def _sla_passed(escalation: Escalation, now: Any) -> bool:
    return escalation.sla_due_at is not None and escalation.sla_due_at <= now


def payload_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer changed: keys added, removed, and changed (with old and new values)."""
    return {
        "added": {k: after[k] for k in after.keys() - before.keys()},
        "removed": {k: before[k] for k in before.keys() - after.keys()},
        "changed": {
            k: [before[k], after[k]] for k in before.keys() & after.keys() if before[k] != after[k]
        },
    }


def _chain_team_ids(slugs: tuple[str, ...]) -> list[int]:
    by_slug = dict(Team.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    return [by_slug[s] for s in slugs if s in by_slug]


def _card(action: Action, kind: EscalationKind) -> dict[str, str]:
    card = card_for_action(action)
    if kind == EscalationKind.AUDIT:
        # The queue marks it: an audit of what already ran, or one holding it before it runs.
        card["audit"] = "held" if action.status == ActionStatus.ESCALATED else "ran"
    return card


# However soon the escalation a revision follows was due, the revision gives its reviewer this
# long: it must not arrive already expired.
REVISION_GRACE = timedelta(minutes=5)


def _keep_the_customers_place(
    revision_of_id: Any, routing: dict[str, Any], due_without_sla_at: Any, now: Any
) -> tuple[dict[str, Any], Any]:
    """A revision (the agent's answer to a Respond) is due when the escalation it follows was,
    not a fresh SLA later: its customer has waited since then, and it must not sink under
    newer tickets. Never sooner than REVISION_GRACE from now (it may not arrive expired)."""
    first = (
        Escalation.objects.filter(action_id=revision_of_id)
        .values("sla_due_at", "due_without_sla_at")
        .first()
    )
    if first is None:
        return routing, due_without_sla_at
    floor = now + REVISION_GRACE
    if routing.get("sla_due_at") is not None and first["sla_due_at"] is not None:
        routing = {
            **routing,
            "sla_due_at": min(routing["sla_due_at"], max(first["sla_due_at"], floor)),
        }
    if first["due_without_sla_at"] is not None:
        due_without_sla_at = min(due_without_sla_at, max(first["due_without_sla_at"], floor))
    return routing, due_without_sla_at


def escalate_action(
    *,
    action: Action,
    team_id: int,
    kind: EscalationKind = EscalationKind.REVIEW,
    with_sla: bool = True,
) -> Escalation:
    """Open an escalation for `action` and announce it to the team's live queue after commit.

    Its SLA, escalation chain, expiry behaviour and quorum are copied from the policy version
    recorded on the action, so editing the policy afterwards changes nothing already open.
    An audit (`kind`) of an action that already ran has no SLA (`with_sla=False`).
    """
    policy = policy_as_evaluated(action.policy_id, action.policy_version)
    now = timezone.now()
    routing: dict[str, Any] = {}
    tool = ACTION_TYPES.get(action.action_type)
    amount = amount_of(tool, action.payload) if tool is not None else None
    risk = grade_risk(
        tool=tool,
        amount=amount,
        max_amount=policy.max_amount if policy is not None else None,
        confidence=action.confidence,
        bar=policy.bar_for(action.agent.trust_level) if policy is not None else None,
    )
    if policy is not None:
        routing["approvals_required"] = policy.approvals_for(amount)
        if policy.sla_minutes and with_sla:
            routing.update(
                sla_minutes=policy.sla_minutes,
                sla_due_at=now + timedelta(minutes=policy.sla_minutes),
                chain=_chain_team_ids(policy.chain_slugs),
                expiry_behaviour=policy.expiry_behaviour,
                expiry_team_id=policy.expiry_team_id
                if policy.expiry_behaviour == ExpiryBehaviour.REROUTE
                else None,
            )
    due_without_sla_at = now + DUE_WITHOUT_SLA[risk]
    if action.revision_of_id is not None:
        routing, due_without_sla_at = _keep_the_customers_place(
            action.revision_of_id, routing, due_without_sla_at, now
        )
    # The template now; the model's after commit (summaries.want_summary), never in here.
    summary = first_summary(action, list(action.reasons))
    escalation = Escalation(
        action=action,
        team_id=team_id,
        kind=kind,
        reasons=list(action.reasons),
        summary=summary,
        created_at=now,
        risk=risk,
        due_without_sla_at=due_without_sla_at,
        search_text=search_text_for_action(action, summary),
        card=_card(action, kind),
        summary_wanted_at=now,
        **routing,
    )
    _insert_escalation(escalation)
    if action.run is not None:
        extras = []
        if escalation.sla_minutes:
            extras.append(f"SLA {escalation.sla_minutes} min")
        if escalation.needs_quorum:
            extras.append(f"needs {escalation.approvals_required} approvals")
        record_trace(
            run=action.run,
            kind=TraceKind.ESCALATED,
            step_name=action.step_name,
            message=f"{action.action_type} "
            + ("sent for audit" if kind == EscalationKind.AUDIT else "escalated")
            + f" to team {escalation.team.name}"
            + (f" ({', '.join(extras)})" if extras else ""),
            data={"escalation": str(escalation.pk)},
        )
    notify.escalation_opened(escalation)
    want_summary()
    return escalation


def _insert_escalation(escalation: Escalation) -> None:
    """`escalation.save(force_insert=True)`; on PostgreSQL its team is read in the same
    statement (the trace names it, the Slack transport posts to its channel)."""
    if not hotsql.enabled():
        escalation.save(force_insert=True)
        return
    row, params = rows.values(escalation)
    found = hotsql.rows(
        _INSERT_ESCALATION.format(
            escalations=rows.table(Escalation),
            columns=", ".join(rows.columns(Escalation)),
            row=row,
            team=_TEAM.sql,
            teams=rows.table(Team),
        ),
        [*params, escalation.team_id],
    )
    rows.saved(escalation)
    if found:
        escalation.team = _TEAM.build(found[0])


# Identifiers from the models' metadata only; every value is a parameter. The INSERT runs
# whether or not the SELECT reads it (a data-modifying CTE always does).
_INSERT_ESCALATION = """
WITH escalation AS (INSERT INTO {escalations} ({columns}) VALUES {row})
SELECT {team} FROM {teams} t WHERE t.id = %s
"""


def decide_escalation(
    *,
    escalation_id: uuid.UUID | str,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str = "",
    edited_payload: dict[str, Any] | None = None,
    agent_id: int | None = None,
) -> Decision | Approval:
    """Record a person's verdict: exactly one wins, whatever channel and however many clicks.

    Raises Http404 if `user` may not see it, ValidationError for a bad verdict,
    DeadlinePassed (a ValidationError) for an approval after `sla_due_at`, NotAPerson if
    `user` is a service account, OwnEscalation if `agent_id` (the agent an API token acts
    for) is the agent whose action this is, and AlreadyDecided (naming the winner) if it was
    decided first elsewhere. On commit, the run is re-enqueued and every open queue is told.

    An escalation needing several approvals (quorum) returns an `Approval` until the last
    one needed arrives, which returns the `Decision`; the same reviewer approving again
    counts once (their first Approval is returned). One rejection ends it at once.
    """

    verdict = Verdict(verdict)
    via = Via(via)
    reason = reason.strip()
    if verdict == Verdict.REJECT and not reason:
        raise ValidationError({"reason": "Say why you reject it; the agent is told."})
    if verdict == Verdict.RESPOND and not reason:
        raise ValidationError({"reason": "Write the answer the agent should get."})
    if edited_payload is not None and not isinstance(edited_payload, dict):
        raise ValidationError({"edited_payload": "The edited payload must be a JSON object."})

    with transaction.atomic():
        escalation, run_status = _escalation_to_decide(user, escalation_id)
        action = escalation.action
        if agent_id is not None and action.agent_id == agent_id:
            raise OwnEscalation("An agent never decides an escalation of its own action.")
        if verdict == Verdict.RESPOND and escalation.audits_what_ran:
            raise ValidationError({NON_FIELD_ERRORS: "It already ran: judge it right or wrong."})
        now = timezone.now()
        if verdict == Verdict.APPROVE and escalation.is_undecided and _sla_passed(escalation, now):
            raise DeadlinePassed(escalation)
        if verdict == Verdict.APPROVE and edited_payload is not None:
            edited_payload = _checked_edit(action, edited_payload)
        quorum = verdict == Verdict.APPROVE and escalation.needs_quorum
        if quorum and edited_payload is not None:
            raise ValidationError(
                {
                    "edited_payload": "This needs several approvals of the same action, so "
                    "it cannot be edited: reject it and say what should change."
                }
            )
        run = None
        if action.run_id is not None and hotsql.enabled():
            # The read above took the run's row (FOR NO KEY UPDATE), before the
            # escalation's and the action's; the deciding statement marks it ready.
            run = RunLocked(status=run_status)
        elif action.run_id is not None:
            # The run's row first, before the escalation's and the action's (see
            # workflows.settle.lock_run). A decision that will resume it at once marks it
            # ready in the same statement: anything short of deciding raises, and rolls the
            # mark back with the rest.
            mark = (
                not quorum
                and not escalation.audits_what_ran
                and resumes_at_once(
                    action_type=action.action_type, approved=verdict == Verdict.APPROVE
                )
            )
            status = lock_run(action.run_id, ready_at=now if mark else None)
            run = RunLocked(status=status, marked=mark)
        if quorum:
            return _approve_towards_quorum(
                escalation=escalation, user=user, via=via, reason=reason, run=run
            )
        new_status = (
            EscalationStatus.APPROVED if verdict == Verdict.APPROVE else EscalationStatus.REJECTED
        )
        return finalise_decision(
            escalation=escalation,
            user=user,
            verdict=verdict,
            via=via,
            reason=reason,
            new_status=new_status,
            edited_payload=edited_payload,
            run=run,
        )


@dataclass(frozen=True)
class RunLocked:
    """What the deciding transaction learnt taking the run's row lock (settle.lock_run)."""

    status: str | None
    # The same statement marked it ready for the drain (if it was waiting).
    marked: bool = False


def lock_run_of(action: Action) -> RunLocked | None:
    """For a decider that did not take the run's row first (its caller locked nothing of
    the escalation's before): take it now. None for an action outside a run."""
    if action.run_id is None:
        return None
    return RunLocked(status=lock_run(action.run_id))


def _escalation_to_decide(user: User, pk: uuid.UUID | str) -> tuple[Escalation, str | None]:
    """get_escalation_for, reading only what a decision needs: the action and the team, not
    the run (its state, plan and input, decoded for nothing) nor the agent (its id will do).

    On PostgreSQL the same statement takes the run's row lock (the decision's first lock,
    see workflows.settle.lock_run) and returns its status, and carries what other apps asked
    to read along (`read_along`); elsewhere the status is None, the caller locks the run."""
    if not hotsql.enabled():
        try:
            return escalations_for(user).select_related("action", "team").get(pk=pk), None
        except (Escalation.DoesNotExist, ValueError):
            raise Http404("No such escalation") from None
    try:
        pk = uuid.UUID(str(pk))
    except ValueError:
        raise Http404("No such escalation") from None
    everything = sees_everything(user)
    # A reviewer's teams are asked in the same statement (user None: nobody's, none).
    found = hotsql.rows(
        _read_to_decide_sql(visible_to_all=everything),
        [pk] if everything else [pk, user.pk if user.is_authenticated else None],
    )
    if not found:
        raise Http404("No such escalation")
    row = found[0]
    escalation = _ESCALATION.build(row)
    start = _ESCALATION.width
    escalation.action = _ACTION.build(row, start)
    start += _ACTION.width
    escalation.team = _TEAM.build(row, start)
    start += _TEAM.width
    setattr(escalation, _READ_ALONG_ATTR, dict(zip(_READ_ALONG, row[start + 1 :], strict=True)))
    return escalation, row[start]


# Columns of the other apps' rows a decision's first read carries: name -> an SQL expression
# over `found.agent_id`, the escalated action's agent (constant text, from code).
_READ_ALONG: dict[str, str] = {}
_READ_ALONG_ATTR = "_decision_read_along"
_ESCALATION = hotsql.Columns(Escalation, "e")
_ACTION = hotsql.Columns(Action, "a")
_TEAM = hotsql.Columns(Team, "t")


def read_along(name: str, expression: str) -> None:
    """Have the read that starts every decision also return `expression` (SQL over
    `found.agent_id`, the escalated action's agent) as `name`, for an in-transaction
    subscriber of another app that would otherwise spend a statement of its own on it (the
    agent API: does the agent have a webhook?). Registered at app start; PostgreSQL only.
    The layers still point one way: the other app hands its SQL here, this one never
    names its tables."""
    _READ_ALONG[name] = expression


def read_along_value(escalation: Escalation, name: str) -> tuple[bool, Any]:
    """(True, what the decision's read found for `name`), or (False, None) when this
    escalation was not read that way (another caller, SQLite): ask the database."""
    values = getattr(escalation, _READ_ALONG_ATTR, None)
    if values is None or name not in values:
        return False, None
    return True, values[name]


# The escalation with its action and team; the run's row locked (FOR NO KEY UPDATE, waited
# for) in the same statement, the escalation's not at all: the deciding UPDATE that follows
# is the race's referee. Identifiers from the models' metadata only.
def _read_to_decide_sql(*, visible_to_all: bool) -> str:
    members = Team.members.through._meta
    also = "".join(f", ({sql}) AS {name}" for name, sql in _READ_ALONG.items())
    team, user = members.get_field("team").column, members.get_field("user").column
    mine = f"SELECT m.{team} FROM {members.db_table} m WHERE m.{user} = %s"  # noqa: S608
    where = "" if visible_to_all else f" AND e.team_id IN ({mine})"
    return f"""
WITH found AS (
    SELECT {_ESCALATION.sql}, {_ACTION.sql}, {_TEAM.sql}
    FROM {Escalation._meta.db_table} e
    JOIN {Action._meta.db_table} a ON a.id = e.action_id
    JOIN {Team._meta.db_table} t ON t.id = e.team_id
    WHERE e.id = %s{where}
), run AS (
    SELECT status FROM {WorkflowRun._meta.db_table}
    WHERE id = (SELECT run_id FROM found) FOR NO KEY UPDATE
)
SELECT found.*, (SELECT status FROM run){also} FROM found
"""  # noqa: S608


def _checked_edit(action: Action, edited: dict[str, Any]) -> dict[str, Any] | None:
    """The reviewer's edit, validated by the action type's declaration (ValidationError if it
    refuses it); None when it changes nothing (an unchanged "edit" is a plain approval)."""
    try:
        get_action_type(action.action_type).validate(edited)
    except ToolError as exc:
        raise ValidationError({"edited_payload": str(exc)}) from None
    return edited if edited != action.payload else None


def finalise_decision(
    *,
    escalation: Escalation,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str,
    new_status: EscalationStatus,
    edited_payload: dict[str, Any] | None = None,
    actor: str | None = None,
    message: str | None = None,
    run: RunLocked | None = None,
) -> Decision:
    """Write the one Decision, move the action, re-enqueue the run. Inside a transaction.

    Raises AlreadyDecided if the escalation is no longer undecided: whoever calls this —
    a person, the last quorum approver, the SLA timer — races through the same conditional
    UPDATE, so exactly one outcome is ever recorded.

    `run`: the caller took the run's row lock first (`lock_run_of`), before any lock on the
    escalation; without it, it is taken here, which is only safe for a caller that holds
    no lock of the escalation's or the action's yet.
    """
    now = timezone.now()
    if run is None:
        run = lock_run_of(escalation.action)
    action = escalation.action
    # Read before the action moves: an audit of an action that already ran alone.
    ran = escalation.audits_what_ran
    decision = rows.new(
        Decision,
        escalation=escalation,
        verdict=verdict,
        decided_by=user,
        via=via,
        reason=reason,
        edited_payload=edited_payload,
    )
    # A person's approval loses to the SLA's clock even before the sweep handles it.
    clock = verdict == Verdict.APPROVE and via != Via.SYSTEM
    if connection.vendor != "postgresql":
        _decide_with_the_orm(escalation, decision, new_status, now, clock=clock)
    # On PostgreSQL the deciding statement marks a waiting run ready itself (record_decision
    # is told it is marked), when record_decision would: no undo window to wait out.
    folds_mark = connection.vendor == "postgresql" and run is not None and not run.marked
    trace = None
    if not ran:
        action.status = (
            ActionStatus.APPROVED if verdict == Verdict.APPROVE else ActionStatus.REJECTED
        )
        if verdict == Verdict.APPROVE and edited_payload is not None:
            action.approved_payload = edited_payload
        # The engine settles the action on its own, whatever its siblings wait for: it is
        # told the verdict, the words and who takes the work over if the fallback runs; the
        # run is marked ready (or its resume sent) in this transaction. Should the decision
        # lose below, the transaction rolls back (the SLA timer, which commits what it did
        # instead, may leave a mark or a wake-up that finds nothing to do: harmless).
        record_decision(
            action=action,
            verdict=verdict,
            approved=verdict == Verdict.APPROVE,
            text=reason,
            by=user.get_username(),
            owner=fallback_owner(user, escalation),
            now=now,
            run_status=run.status if run is not None else None,
            marked=run is not None and (run.marked or folds_mark),
        )
        if action.run_id is not None:
            trace = _decision_trace(
                action,
                escalation,
                user,
                verdict,
                via,
                reason,
                new_status,
                edited_payload,
                actor=actor,
                message=message,
            )
    if connection.vendor == "postgresql":
        _decide_in_one_statement(
            escalation,
            decision,
            new_status,
            now,
            clock=clock,
            action=None if ran else action,
            trace=trace,
            ready_run=action.run_id
            if folds_mark
            and not ran
            and run is not None
            and run.status == RunStatus.WAITING
            and action.execute_after is None
            else None,
        )
    elif not ran:
        action.save(update_fields=["status", "approved_payload", "feedback", "execute_after"])
        if trace is not None:
            trace.save(force_insert=True)
    escalation.status = new_status
    escalation.decided_at = now
    # An audit of an action that already ran alone: the verdict is evidence about it (the
    # recommender and the drift test read it); the action and its run stay as they are.
    notify.escalation_changed(escalation)
    return decision


def _decision_trace(
    action: Action,
    escalation: Escalation,
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str,
    new_status: EscalationStatus,
    edited_payload: dict[str, Any] | None,
    *,
    actor: str | None,
    message: str | None,
) -> TraceEvent:
    assert action.run_id is not None
    return rows.new(
        TraceEvent,
        run_id=action.run_id,
        kind=TraceKind.HUMAN if via != Via.SYSTEM else TraceKind.SYSTEM,
        step_name=action.step_name,
        actor=actor if actor is not None else user.get_username(),
        message=message
        or (
            f"{user.get_username()} "
            + ("answered instead of running" if verdict == Verdict.RESPOND else new_status)
            + f" {action.action_type} via {via}"
            + (f": {reason}" if reason else "")
        ),
        data={
            "payload_diff": payload_diff(action.payload, edited_payload)
            if edited_payload is not None
            else None,
            "escalation": str(escalation.pk),
            "verdict": verdict,
            "via": via,
            "edited": edited_payload is not None,
        },
    )


def _lost(escalation: Escalation, now: Any) -> Exception:
    """Why the conditional UPDATE found the escalation decided (or past its SLA)."""
    escalation.refresh_from_db()
    if escalation.is_undecided and _sla_passed(escalation, now):
        return DeadlinePassed(escalation)
    return AlreadyDecided(escalation)


def _decide_with_the_orm(
    escalation: Escalation, decision: Decision, new_status: str, now: Any, *, clock: bool
) -> None:
    """Embedded mode's SQLite: the conditional UPDATE, then the Decision."""
    undecided = Escalation.objects.filter(pk=escalation.pk, status__in=UNDECIDED_STATUSES)
    if clock:
        undecided = undecided.filter(Q(sla_due_at__isnull=True) | Q(sla_due_at__gt=now))
    # The conditional UPDATE is the race's referee: its row count says who won.
    if not undecided.update(status=new_status, decided_at=now):
        raise _lost(escalation, now)
    try:
        with transaction.atomic():
            decision.save(force_insert=True)
    except IntegrityError as exc:
        refused = _refused_decider(exc, decision.decided_by)
        if refused is not None:
            raise refused from None
        escalation.refresh_from_db()
        raise AlreadyDecided(escalation) from None


# Identifiers from the models' metadata only; every value is a parameter. The conditional
# UPDATE is the race's referee; the rest is written only if it won (FROM won), the action's
# change and its trace only if the Decision went in (its escalation is unique).
_DECIDE = """
WITH won AS (
    UPDATE {escalations} SET status = %s, decided_at = %s
    WHERE id = %s AND status = ANY(%s){clock} RETURNING id
), decision AS (
    INSERT INTO {decisions} ({decision_columns}) SELECT v.* FROM won, (VALUES {decision_row}) AS v
    ON CONFLICT DO NOTHING RETURNING id
){action}{trace}
SELECT (SELECT count(*) FROM won), (SELECT id FROM decision)
"""
_DECIDE_CLOCK = " AND (sla_due_at IS NULL OR sla_due_at > %s)"
_DECIDE_ACTION = """, action AS (
    UPDATE {actions} SET status = %s, approved_payload = %s::jsonb, feedback = %s::jsonb,
        execute_after = %s
    WHERE id = %s AND EXISTS (SELECT 1 FROM decision)
)"""
_DECIDE_TRACE = """, trace AS (
    INSERT INTO {traces} ({trace_columns}) SELECT v.* FROM decision, (VALUES {trace_row}) AS v
)"""
# The run's row is already locked (the decision's first lock): marked ready for the drain.
_DECIDE_READY = """, ready AS (
    UPDATE {runs} SET ready_at = %s
    WHERE id = %s AND status = 'waiting' AND EXISTS (SELECT 1 FROM decision)
)"""


def _decide_in_one_statement(
    escalation: Escalation,
    decision: Decision,
    new_status: str,
    now: Any,
    *,
    clock: bool,
    action: Action | None,
    trace: TraceEvent | None,
    ready_run: Any = None,
) -> None:
    """The conditional UPDATE, the Decision, the action's change, its trace and the mark
    that makes the drain claim the waiting run `ready_run` (if given): one round trip.
    Raises AlreadyDecided / DeadlinePassed when it lost, NotAPerson when the
    database refuses the decider (the transaction is then aborted: nothing more is read)."""
    decision_row, decision_params = rows.values(decision)
    params: list[Any] = [new_status, now, escalation.pk, list(UNDECIDED_STATUSES)]
    if clock:
        params.append(now)
    params += decision_params
    action_sql = trace_sql = ""
    if action is not None:
        action_sql = _DECIDE_ACTION.format(actions=rows.table(Action))
        json = connection.ops.adapt_json_value
        params += [
            action.status,
            json(action.approved_payload, None) if action.approved_payload is not None else None,
            json(action.feedback, None),
            action.execute_after,
            action.pk,
        ]
    if trace is not None:
        trace_row, trace_params = rows.values(trace)
        trace_sql = _DECIDE_TRACE.format(
            traces=rows.table(TraceEvent),
            trace_columns=", ".join(rows.columns(TraceEvent)),
            trace_row=trace_row,
        )
        params += trace_params
    ready_sql = ""
    if ready_run is not None:
        ready_sql = _DECIDE_READY.format(runs=rows.table(WorkflowRun))
        params += [now, ready_run]
    sql = _DECIDE.format(
        escalations=rows.table(Escalation),
        clock=_DECIDE_CLOCK if clock else "",
        decisions=rows.table(Decision),
        decision_columns=", ".join(rows.columns(Decision)),
        decision_row=decision_row,
        action=action_sql,
        trace=trace_sql + ready_sql,
    )
    try:
        [(won, decided)] = hotsql.rows(sql, params)
    except IntegrityError as exc:
        raise _refused_decider(exc, decision.decided_by) or exc from None
    if not won:
        raise _lost(escalation, now)
    if decided is None:
        escalation.refresh_from_db()
        raise AlreadyDecided(escalation)
    decision.pk = decided
    rows.saved(decision)


def fallback_owner(user: User, escalation: Escalation) -> str:
    """Who takes the work over when the action's fallback runs: the person who decided, or,
    for the SLA's system user, the first active member of the escalation's team."""
    # sla imports this module (finalise_decision): read its constant at call time.
    from .sla import SYSTEM_USERNAME

    if user.is_active and user.get_username() != SYSTEM_USERNAME:
        return user.get_username()
    member = escalation.team.members.filter(is_active=True).order_by("username").first()
    return member.get_username() if member is not None else f"the {escalation.team.name} team"


class TooLateToUndo(Exception):
    """The approval can no longer be undone (executed, window over, not an approval)."""


class NotTheApprover(TooLateToUndo):
    """Only the person who approved it (or an admin) may undo an approval."""


def undo_approval(
    *, escalation_id: uuid.UUID | str, user: User, via: Via, agent_id: int | None = None
) -> Escalation:
    """Take back an approval inside the action's undo window: the escalation is open in the
    queue again, the action waits for a person, nothing ran. The approval and the undo both
    stay in the run's trace. Only the approver (or an admin) may undo (NotTheApprover), and,
    like a decision, never through a token of the agent whose action it is (OwnEscalation).
    A second undo (a double click, a redelivered Slack action) finds it open: TooLateToUndo.

    Starts from approved with the action approved, inside its window, with no effect in the
    ledger; raises TooLateToUndo otherwise. The escalation's and the action's rows are
    locked, in the order the engine's settlement takes the action's: an undo racing the
    window's end either wins or finds the action executed.
    """
    with transaction.atomic():
        escalation = get_escalation_for(user, escalation_id)
        if agent_id is not None and escalation.action.agent_id == agent_id:
            raise OwnEscalation("An agent never decides an escalation of its own action.")
        locked = Escalation.objects.select_for_update().filter(pk=escalation.pk).first()
        decision = Decision.objects.filter(escalation=escalation).first()
        if locked is None or locked.status != EscalationStatus.APPROVED or decision is None:
            raise TooLateToUndo(f"it is {escalation.status}, not an approval waiting to run")
        if decision.decided_by_id != user.pk and not user.is_superuser:
            raise NotTheApprover(f"only {decision.decided_by} (who approved it) can undo it")
        action = Action.objects.select_for_update().get(pk=escalation.action_id)
        now = timezone.now()
        if (
            not action.in_undo_window(now)
            or Effect.objects.filter(key=action.idempotency_key).exists()
        ):
            raise TooLateToUndo("its undo window is over: it has run or is running")
        left = (action.execute_after - now).total_seconds() if action.execute_after else 0
        action.save(update_fields=record_undo(action=action))
        decision.delete()
        Approval.objects.filter(escalation=escalation).delete()
        escalation.status = EscalationStatus.OPEN
        escalation.decided_at = None
        escalation.claimed_by = None
        escalation.claimed_at = None
        escalation.save(update_fields=["status", "decided_at", "claimed_by", "claimed_at"])
        trace_escalation(
            action,
            escalation,
            f"{user.get_username()} undid the approval of {action.action_type} via {via}, "
            f"{left:.0f} s before it would have run: nothing was sent; it is back in the queue",
            kind=TraceKind.HUMAN,
            actor=user.get_username(),
            undo=True,
            via=via,
        )
        notify.escalation_changed(escalation)
        notify.escalation_opened(escalation)
    return escalation


def _approve_towards_quorum(
    *, escalation: Escalation, user: User, via: Via, reason: str, run: RunLocked | None
) -> Decision | Approval:
    """One distinct reviewer's approval; the last one needed decides. Inside a transaction.

    The escalation's row lock serialises approvers (and the SLA timer), so the count read
    after inserting is the true count and exactly one approver completes the quorum.
    """
    locked = Escalation.objects.select_for_update().filter(pk=escalation.pk).first()
    if locked is None or not locked.is_undecided:
        escalation.refresh_from_db()
        raise AlreadyDecided(escalation)
    escalation.status = locked.status
    existing = Approval.objects.filter(escalation=escalation, decided_by=user).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            approval = Approval.objects.create(
                escalation=escalation, decided_by=user, via=via, reason=reason
            )
    except IntegrityError as exc:
        raise _refused_decider(exc, user) or exc from None
    approvers = list(
        Approval.objects.filter(escalation=escalation)
        .order_by("created_at", "pk")
        .values_list("decided_by__username", flat=True)
    )
    required = escalation.approvals_required
    action = escalation.action
    if len(approvers) >= required:
        return finalise_decision(
            escalation=escalation,
            user=user,
            verdict=Verdict.APPROVE,
            via=via,
            reason=reason,
            new_status=EscalationStatus.APPROVED,
            run=run,
            message=f"{user.get_username()} approved {action.action_type} via {via}, "
            f"completing the quorum ({', '.join(approvers)}: {len(approvers)} of {required})"
            + (f": {reason}" if reason else ""),
        )
    trace_escalation(
        action,
        escalation,
        f"{user.get_username()} approved {action.action_type} via {via} "
        f"({len(approvers)} of {required} approvals)" + (f": {reason}" if reason else ""),
        kind=TraceKind.HUMAN,
        actor=user.get_username(),
        verdict=Verdict.APPROVE,
        via=via,
    )
    notify.escalation_changed(escalation)
    return approval
