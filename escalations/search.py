"""Full-text search over open escalations: what a reviewer remembers of one (the customer,
the ticket's words, the reply's words, the agent) finds it.

The text is written once, when the escalation is opened (`Escalation.search_text`). On
PostgreSQL it is searched with its full-text search (`websearch_to_tsquery`, English
stemming) over a stored tsvector column with a GIN index over the undecided rows
(migration 0008); on SQLite (embedded mode) every word must appear, case-insensitively
(LIKE).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Q, QuerySet

if TYPE_CHECKING:
    from workflows.models import Action

_PUNCT = re.compile(r"[@._\-/:#]+")
SEARCH_CONFIG = "english"
MAX_TEXT = 20_000
MAX_WORDS = 8


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 6:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, depth + 1)


def search_text_for(
    *,
    action_type: str,
    agent: str,
    payload: Mapping[str, Any],
    ticket: Mapping[str, Any] | None,
    summary: str = "",
) -> str:
    parts = [action_type, agent, *_strings(dict(ticket or {})), *_strings(dict(payload)), summary]
    # PostgreSQL's parser keeps an address or an id whole ("ada.1@example.com", "-000042"):
    # their pieces are added too, so "ada" or "000042" finds them.
    pieces = [_PUNCT.sub(" ", p) for p in parts if len(p) < 200 and _PUNCT.search(p)]
    # NUL cannot be stored in a PostgreSQL text column.
    return "\n".join(p for p in [*parts, *pieces] if p).replace("\x00", " ")[:MAX_TEXT]


def search_text_for_action(action: Action, summary: str) -> str:
    """The search text of an escalation of `action`: its type, agent, payload and the run's
    ticket, with `summary` (the template's, or the model's once written)."""
    return search_text_for(
        action_type=action.action_type,
        agent=action.agent.name,
        payload=action.payload,
        ticket=action.run.input if action.run is not None else None,
        summary=summary,
    )


def words(text: str) -> list[str]:
    return text.replace("\x00", " ").split()[:MAX_WORDS]


def matching(qs: QuerySet[Any], text: str, *, common: bool = False) -> QuerySet[Any]:
    """`qs` narrowed to the rows matching `text` (nothing to match: `qs` itself).

    `common`: the caller knows the text matches many rows (more than a page's worth many
    times over). PostgreSQL then reads the rows in the queue's order and tests each, which
    finds a page of them after a short walk, instead of collecting every match through the
    full-text index and sorting them all; its estimate of how many match a search is too
    poor to choose by itself (it sorted 4,920 for a page of 50: 47 ms at 100k, measured)."""
    terms = words(text)
    if not terms:
        return qs
    if connection.vendor == "postgresql":
        # The stored column of migration 0008 (generated from search_text; the model does
        # not declare it, so Django never writes it): its GIN index serves this, unless the
        # test is wrapped (IS TRUE) so that no index can.
        table = qs.model._meta.db_table
        test = f'"{table}"."search_vector" @@ websearch_to_tsquery(%s::regconfig, %s)'
        return qs.extra(  # noqa: S610 - the table name is ours; the text is a parameter
            where=[f"({test}) IS TRUE" if common else test],
            params=[SEARCH_CONFIG, " ".join(terms)],
        )
    condition = Q()
    for term in terms:
        condition &= Q(search_text__icontains=term)
    return qs.filter(condition)


def matches_text(search_text: str, text: str) -> bool:
    """In Python, for a pushed row: every word present (a superset test would be FTS's own
    stemming; the page re-reads its window once changes stop, so a difference is brief)."""
    haystack = search_text.lower()
    return all(term.lower().strip('"') in haystack for term in words(text))
