"""Mutations behind the agent API, one module per seam: tokens, submitted actions and their
results, decision webhooks. Views, the admin, the management commands, Celery tasks and
tests all call these."""

from .runs import RunKeyConflict, start_run_for_token
from .submissions import (
    IdempotencyConflict,
    ResultConflict,
    record_action_result,
    submit_action,
)
from .tokens import NotAReviewer, check_reviewer, create_api_token, revoke_api_token
from .webhook_delivery import (
    attempt_webhook_delivery,
    queue_decision_webhook,
    requeue_stalled_deliveries,
    resend_delivery,
)

__all__ = [
    "IdempotencyConflict",
    "NotAReviewer",
    "ResultConflict",
    "RunKeyConflict",
    "attempt_webhook_delivery",
    "check_reviewer",
    "create_api_token",
    "queue_decision_webhook",
    "record_action_result",
    "requeue_stalled_deliveries",
    "resend_delivery",
    "revoke_api_token",
    "start_run_for_token",
    "submit_action",
]
