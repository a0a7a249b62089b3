"""`{% slack_delivery_problems esc %}`: a permanent Slack delivery error, where reviewers look."""

from __future__ import annotations

from typing import Any

from django import template

from escalations.models import Escalation

from ..models import MessageStatus, SlackMessage

register = template.Library()


@register.inclusion_tag("slack/_delivery_problems.html")
def slack_delivery_problems(esc: Escalation) -> dict[str, Any]:
    failed = list(
        SlackMessage.objects.filter(escalation=esc, status=MessageStatus.FAILED).order_by(
            "created_at"
        )
    )
    return {"failed": failed}
