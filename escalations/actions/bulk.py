"""Deciding several escalations at once, with one reason: each one still its own decision.

Every escalation goes through `decide_escalation` in a transaction of its own, so each is
decided exactly once (its conditional UPDATE referees every race, a resubmitted form
included), audited like any other (its Decision row and its run's trace), and one that
fails never undoes the others. Approving irreversible actions in bulk needs the caller to
say it confirmed them: an irreversible action is never approved by a stray selection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import Http404

from workflows.tools import ACTION_TYPES

from ..access import escalations_for
from ..models import UNDECIDED_STATUSES, Decision, Verdict, Via
from .decisions import AlreadyDecided, decide_escalation

MAX_BULK = 200


@dataclass
class BulkOutcome:
    decided: list[str] = field(default_factory=list)
    # Quorum escalations: this approval counted, more are needed.
    counted: list[str] = field(default_factory=list)
    # Someone else got there first: (id, who and how).
    already: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    # Irreversible and not confirmed: nothing was decided; ask, then call again.
    needs_confirmation: list[str] = field(default_factory=list)


def _ids(raw: Iterable[object]) -> list[str]:
    out: list[str] = []
    for value in raw:
        try:
            pk = str(uuid.UUID(str(value)))
        except ValueError:
            continue
        if pk not in out:
            out.append(pk)
    return out


def irreversible_among(*, user: User, escalation_ids: Iterable[object]) -> list[str]:
    """The undecided escalations among these, visible to `user`, whose action cannot be undone."""
    rows = (
        escalations_for(user)
        .filter(pk__in=_ids(escalation_ids), status__in=UNDECIDED_STATUSES)
        .values_list("id", "action__action_type")
    )
    return [
        str(pk)
        for pk, action_type in rows
        if action_type not in ACTION_TYPES or not ACTION_TYPES[action_type].reversible
    ]


def decide_escalations(
    *,
    escalation_ids: Iterable[object],
    user: User,
    verdict: Verdict,
    via: Via,
    reason: str = "",
    irreversible_confirmed: bool = False,
) -> BulkOutcome:
    """Decide each of `escalation_ids` (at most MAX_BULK) with the same verdict and reason.

    Raises ValidationError for a reject without a reason or too many at once, before
    deciding anything. Not transactional as a whole, on purpose: see the module docstring.
    """
    verdict = Verdict(verdict)
    if verdict == Verdict.RESPOND:
        raise ValidationError({"verdict": "Answering the agent is done one escalation at a time."})
    if verdict == Verdict.REJECT and not reason.strip():
        raise ValidationError({"reason": "Say why you reject them; each agent is told."})
    ids = _ids(escalation_ids)
    if len(ids) > MAX_BULK:
        raise ValidationError(f"At most {MAX_BULK} at once.")
    outcome = BulkOutcome()
    if verdict == Verdict.APPROVE and not irreversible_confirmed:
        outcome.needs_confirmation = irreversible_among(user=user, escalation_ids=ids)
        if outcome.needs_confirmation:
            return outcome
    for pk in ids:
        try:
            result = decide_escalation(
                escalation_id=pk, user=user, verdict=verdict, via=via, reason=reason
            )
        except AlreadyDecided as exc:
            outcome.already.append((pk, str(exc)))
        except Http404:
            outcome.refused.append((pk, "not found, or not your team's"))
        except ValidationError as exc:
            outcome.refused.append((pk, " ".join(exc.messages)))
        else:
            (outcome.decided if isinstance(result, Decision) else outcome.counted).append(pk)
    return outcome
