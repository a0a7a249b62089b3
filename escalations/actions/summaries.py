"""Writing the model's summary of an escalation, after the escalation committed."""

from __future__ import annotations

import uuid

from django.db import transaction

from .. import notify
from ..models import Escalation
from ..summary import PENDING_NOTE, summarise


def write_model_summary(*, escalation_id: uuid.UUID | str) -> bool:
    """Replace an escalation's template summary with the model's; True if this call wrote it.

    The model is called outside any transaction. Safe to run twice or at once: only a
    summary still pending is replaced (a conditional UPDATE), and a written one is kept.
    """
    escalation = (
        Escalation.objects.select_related("action__run", "action__agent")
        .filter(pk=escalation_id)
        .first()
    )
    if escalation is None or not escalation.summary.endswith(PENDING_NOTE):
        return False
    text = summarise(escalation.action, list(escalation.reasons))
    with transaction.atomic():
        written = Escalation.objects.filter(
            pk=escalation.pk, summary__endswith=PENDING_NOTE
        ).update(summary=text)
        if written:
            escalation.summary = text
            notify.escalation_summarised(escalation)
    return bool(written)
