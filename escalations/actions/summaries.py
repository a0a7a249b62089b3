"""Writing the model's summary of an escalation, after the escalation committed."""

from __future__ import annotations

import uuid

from django.db import transaction

from .. import notify
from ..models import Escalation
from ..search import search_text_for_action
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
    action = escalation.action
    text = summarise(action, list(escalation.reasons))
    # Searchable by what the model wrote too, not only by the template it replaces.
    searchable = search_text_for_action(action, text)
    with transaction.atomic():
        written = Escalation.objects.filter(
            pk=escalation.pk, summary__endswith=PENDING_NOTE
        ).update(summary=text, search_text=searchable)
        if written:
            escalation.summary = text
            notify.escalation_summarised(escalation)
    return bool(written)
