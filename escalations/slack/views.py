"""/slack/interactions/: Slack's interactivity request URL."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import conf, interactions
from .models import SeenRequest

log = logging.getLogger(__name__)


def _verified(request: HttpRequest, body: bytes) -> bool:
    try:
        return conf.verifier().is_valid_request(body, dict(request.headers.items()))
    except (ValueError, TypeError, UnicodeDecodeError):
        return False  # a timestamp that is not a number, a body that is not text


def _first_time(signature: str) -> bool:
    """A valid signature is valid for five minutes; it must be acted on only once.

    One INSERT in autocommit, its own transaction in one round trip: wrapped in atomic() it
    would cost a BEGIN and a COMMIT more, and inside the decision's transaction a savepoint
    pair more (the decision's own atomic block nests), on the path Slack's ack waits on.
    Recorded before the decision, so a replay racing the original is refused even while
    the original is still deciding."""
    try:
        if transaction.get_connection().in_atomic_block:
            # Someone (a test) holds a transaction: a failed INSERT must not abort it.
            with transaction.atomic():
                SeenRequest.objects.create(signature=signature)
        else:
            SeenRequest.objects.create(signature=signature)
    except IntegrityError:
        return False
    return True


@csrf_exempt
@require_POST
def interactions_view(request: HttpRequest) -> HttpResponse:
    if not conf.enabled():
        raise Http404("Slack is not configured")
    # The raw bytes, before anything parses them: the signature covers exactly these.
    body = request.body
    if not _verified(request, body):
        return HttpResponse("invalid signature", status=401, content_type="text/plain")
    if not _first_time(request.headers["X-Slack-Signature"]):
        log.warning("refused a replayed Slack request")
        return HttpResponse("replayed request", status=401, content_type="text/plain")
    try:
        raw = parse_qs(body.decode(), strict_parsing=True)["payload"][0]
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("payload is not an object")
    except (KeyError, ValueError, UnicodeDecodeError):
        return HttpResponse("expected a form field 'payload' with JSON", status=400)
    kind = payload.get("type")
    if kind == "block_actions":
        return interactions.block_actions(payload)
    if kind == "view_submission":
        return interactions.view_submission(payload)
    return interactions.ok()
