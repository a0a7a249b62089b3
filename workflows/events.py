"""The one neutral place where a change is announced and its fan-out subscribes.

A publisher (an action, inside the transaction that made the change) names the event and
the ids it concerns; it never knows who listens. Subscribers register at app start, from
their AppConfig.ready, and come in two kinds:

- `after_commit` (the default): called once the change is committed, with the ids only (a
  live push, a long-poll wake-up). A failing subscriber is logged and never undoes the
  change nor stops the others.
- `in_transaction`: called at once, inside the publishing transaction, to write its own
  outbox row with the change (a Slack message, a webhook delivery), so a crash between
  commit and send loses nothing; it sends only after commit. It gets the in-process
  `subject` too (the changed row, never serialised) so that writing the row costs no read.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db import transaction

log = logging.getLogger(__name__)

Ids = dict[str, str | int | bool | None]


@dataclass(frozen=True)
class Event:
    name: str
    ids: Ids
    # In-process only, for in-transaction subscribers; None after commit.
    subject: Any = field(default=None, compare=False)


Handler = Callable[[Event], None]
Phase = Literal["in_transaction", "after_commit"]

_subscribers: dict[tuple[str, Phase], list[Handler]] = defaultdict(list)


def subscribe(name: str, handler: Handler, *, phase: Phase = "after_commit") -> None:
    """Register `handler` for events called `name`. Idempotent (ready() may run twice)."""
    handlers = _subscribers[(name, phase)]
    if handler not in handlers:
        handlers.append(handler)


def publish(name: str, *, subject: Any = None, **ids: str | int | bool | None) -> None:
    """Announce a change. Precondition: inside the transaction that made it."""
    event = Event(name=name, ids=ids, subject=subject)
    for handler in _subscribers.get((name, "in_transaction"), ()):
        handler(event)
    later = list(_subscribers.get((name, "after_commit"), ()))
    if later:
        committed = Event(name=name, ids=ids)

        def dispatch() -> None:
            for handler in later:
                try:
                    handler(committed)
                except Exception:
                    # The change is committed: one subscriber failing must not keep the
                    # others from hearing of it.
                    log.exception("event %s: subscriber %s failed", name, handler)

        transaction.on_commit(dispatch)
