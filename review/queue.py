"""The queue's filters, queries, counts and its one row partial, shared by view and consumer.

Ordering is by SLA due time (soonest first; escalations without an SLA after those with
one, oldest first), with the primary key as the last tie-break so the order is total: the
consumer places a pushed row before its successor, which only works if "successor" is
well-defined.

A page is PAGE_SIZE rows of that order, starting after a cursor (the last row of the page
before; none for the first page): keyset pagination, so every open escalation is reachable
and a deep page costs an index range read, not an OFFSET scan. Counts are exact up to
COUNT_CAP and shown as "1,000+" beyond it; past FACET_SAMPLE open, the facet counts are
over the FACET_SAMPLE due soonest (with a search: over FACET_SAMPLE of its matches), and
the page says so. Both keep /review/'s cost flat
however long the queue gets (the partial indexes in escalations 0007 serve the order).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.db.models import F, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince, timeuntil

from escalations.access import AnyUser, escalations_for
from escalations.models import QUEUE_DUE, UNDECIDED_STATUSES, Escalation, EscalationStatus
from escalations.risk import RISK_ORDER
from escalations.search import matches_text, matching
from workflows.tools import ACTION_TYPES

from .rows import row_html

PAGE_SIZE = 50
COUNT_CAP = 1_000
# The facet counts join every row to its action and run (for type, agent and workflow):
# over 1,000 rows that join was a third of the page's time at 100k open, measured.
FACET_SAMPLE = 500
_MAX_PARAM = 100


class InvalidFilter(ValueError):
    """A filter value no real value can look like (a NUL or another control character): the
    request is junk, answered 400 (a page) or closed 4400 (the websocket). PostgreSQL cannot
    even compare text with a NUL in it: psycopg refuses to send one."""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


FACETS = ("team", "workflow", "agent", "action_type", "risk", "status")


@dataclass(frozen=True)
class QueueFilters:
    """What one reviewer's page shows. Parsed leniently: an unknown value filters nothing."""

    team: str = ""  # team slug
    workflow: str = ""
    agent: str = ""  # agent name
    action_type: str = ""
    risk: str = ""
    status: str = ""
    mine: bool = False
    # Full-text search (escalations.search).
    q: str = ""
    # The id of the row this page starts after (keyset pagination); "" for the first page.
    after: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> QueueFilters:
        """Raises InvalidFilter on control characters; any other unknown value just matches
        nothing (or, for the risk, status and page cursor, is ignored)."""

        def text(name: str) -> str:
            value = params.get(name, "")
            if isinstance(value, list):
                value = value[-1] if value else ""
            value = str(value)
            if _CONTROL.search(value):
                raise InvalidFilter(f"The {name} filter holds a control character no {name} has.")
            return value.strip()[:_MAX_PARAM]

        risk = text("risk")
        status = text("status")
        try:
            after = str(uuid.UUID(text("after"))) if text("after") else ""
        except ValueError:
            after = ""
        return cls(
            team=text("team"),
            workflow=text("workflow"),
            agent=text("agent"),
            action_type=text("action_type"),
            risk=risk if risk in RISK_ORDER else "",
            status=status if status in UNDECIDED_STATUSES else "",
            mine=text("mine") in ("1", "true", "on"),
            q=" ".join(text("q").replace("\x00", " ").split()),
            after=after,
        )

    def params(self) -> dict[str, str]:
        out = {k: getattr(self, k) for k in FACETS if getattr(self, k)}
        if self.mine:
            out["mine"] = "1"
        if self.q:
            out["q"] = self.q
        if self.after:
            out["after"] = self.after
        return out

    @property
    def query(self) -> str:
        return urlencode(self.params())

    @property
    def active(self) -> bool:
        """Whether anything narrows the queue (a page of it is not a narrowing)."""
        return bool(replace(self, after="").params())

    def toggled(self, facet: str, value: str) -> str:
        """The query string for clicking `value` of `facet`: select it, or clear it if selected.
        Back to the first page: the cursor belongs to the old filters' order."""
        first = replace(self, after="")
        if facet == "mine":
            return replace(first, mine=not self.mine).query
        if facet == "q":
            return replace(first, q="").query
        current = getattr(self, facet)
        changes: dict[str, Any] = {facet: "" if current == value else value}
        return replace(first, **changes).query

    def page_after(self, pk: str) -> str:
        return replace(self, after=pk).query

    @property
    def search_hidden(self) -> list[tuple[str, str]]:
        """The filters a search keeps (hidden fields of the search form): all but the
        search itself and the page."""
        return list(replace(self, q="", after="").params().items())

    @property
    def first_page(self) -> str:
        return replace(self, after="").query

    def condition(self, user: AnyUser) -> Q:
        q = Q()
        if self.team:
            q &= Q(team__slug=self.team)
        # The card's copies (escalations.rendering.queue_card): no join to filter on them.
        if self.workflow:
            q &= Q(card__workflow=self.workflow)
        if self.agent:
            q &= Q(card__agent=self.agent)
        if self.action_type:
            q &= Q(card__type=self.action_type)
        if self.risk:
            q &= Q(risk=self.risk)
        if self.status:
            q &= Q(status=self.status)
        if self.mine:
            q &= Q(claimed_by_id=user.pk) if user.is_authenticated else Q(pk__in=[])
        return q

    def narrow(
        self, qs: QuerySet[Escalation], user: AnyUser, *, common: bool = False
    ) -> QuerySet[Escalation]:
        """`qs` with every filter and the search applied (`common`: escalations.search)."""
        return matching(qs.filter(self.condition(user)), self.q, common=common)

    def matches(self, row: Mapping[str, Any], user: AnyUser) -> bool:
        """condition(), in Python, for a row from load_row()."""
        return not (
            (self.team and row["team_slug"] != self.team)
            or (self.workflow and row["workflow"] != self.workflow)
            or (self.agent and row["agent"] != self.agent)
            or (self.action_type and row["type"] != self.action_type)
            or (self.risk and row["risk"] != self.risk)
            or (self.status and row["status"] != self.status)
            or (self.mine and (not user.is_authenticated or row["claimed_by_id"] != user.pk))
            or (self.q and not matches_text(row.get("search", ""), self.q))
        )


SortKey = tuple[Any, ...]


def sort_key(due: datetime, created_at: datetime, pk: uuid.UUID | str) -> SortKey:
    """A row's place in ordered(), comparable in Python (uuid order is the database's too)."""
    pk = pk if isinstance(pk, uuid.UUID) else uuid.UUID(str(pk))
    return (due, created_at, pk)


def after_conditions(key: SortKey) -> list[Q]:
    """Rows strictly after `key` in ordered(), as conditions to read one after the other.

    Starts with a bound the partial indexes can seek to (due >= x), so a deep page is an
    index range read like the first; an OR alone could not be, and PostgreSQL read (and
    threw away) every row before the cursor instead (24 ms at 49,000 deep, measured).
    """
    due, created, pk = key
    return [
        Q(q_due__gte=due)
        & (Q(q_due__gt=due) | Q(created_at__gt=created) | Q(created_at=created, id__gt=pk))
    ]


def cursor_key(user: AnyUser, filters: QueueFilters) -> SortKey | None:
    """Where a page starts: the cursor row's place, decided or not (it may have been decided
    since the link was made: the page still starts where it did). None: the first page."""
    if not filters.after:
        return None
    row = (
        escalations_for(user)
        .filter(pk=filters.after)
        .annotate(q_due=QUEUE_DUE)
        .values_list("q_due", "created_at", "id")
        .first()
    )
    return sort_key(*row) if row is not None else None


def undecided_for(user: AnyUser) -> QuerySet[Escalation]:
    """Every undecided escalation this user may see (the access helper decides which)."""
    return escalations_for(user).filter(status__in=UNDECIDED_STATUSES)


def ordered(qs: QuerySet[Escalation]) -> QuerySet[Escalation]:
    """SLA due first, else due by risk and age (Escalation.due_without_sla_at): nothing
    without an SLA sinks under every newer row that has one."""
    # mypy's Django plugin cannot see the annotation with_due() adds.
    return with_due(qs).order_by("q_due", "created_at", "id")  # type: ignore[misc]


def with_due(qs: QuerySet[Escalation]) -> QuerySet[Escalation]:
    """`qs` with its queue due time as `q_due` (what ordered() and the cursor compare)."""
    if "q_due" in qs.query.annotations:
        return qs
    return qs.annotate(q_due=QUEUE_DUE)


# What a row shows, read as plain values: building fifty model instances (with their
# action, run, agent, team and claimer) cost more than the query itself. What cannot change
# while it waits is the escalation's card (escalations.rendering.queue_card), written when it
# was opened: no payload, run input or agent is read for a page.
_ROW_VALUES: dict[str, Any] = {
    "r_id": F("id"),
    "r_status": F("status"),
    "r_sla": F("sla_due_at"),
    "r_due": QUEUE_DUE,
    "r_risk": F("risk"),
    "r_created": F("created_at"),
    "r_team_id": F("team_id"),
    "r_team": F("team__name"),
    "r_team_slug": F("team__slug"),
    "r_claimed_by_id": F("claimed_by_id"),
    "r_claimed_by": F("claimed_by__username"),
    "r_card": F("card"),
}


def _values(qs: QuerySet[Escalation]) -> QuerySet[Escalation, Any]:
    return qs.values(**_ROW_VALUES)


def _windows(
    base: QuerySet[Escalation],
    filters: QueueFilters,
    user: AnyUser,
    cursor: SortKey | None,
    *,
    common: bool = False,
) -> list[QuerySet[Escalation]]:
    """The page's rows, as ordered querysets to read in turn (one for the first page)."""
    qs = filters.narrow(base, user, common=common)
    if cursor is None:
        return [ordered(qs)]
    return [ordered(with_due(qs).filter(cond)) for cond in after_conditions(cursor)]


def _first(querysets: list[QuerySet[Any]], limit: int) -> list[Any]:
    out: list[Any] = []
    for qs in querysets:
        out += list(qs[: limit - len(out)])
        if len(out) >= limit:
            break
    return out


def queue_rows(
    base: QuerySet[Escalation],
    filters: QueueFilters,
    user: AnyUser,
    cursor: SortKey | None = None,
    *,
    limit: int = PAGE_SIZE,
    common: bool = False,
) -> list[dict[str, Any]]:
    now = timezone.now()
    windows = _windows(base, filters, user, cursor, common=common)
    values = _first([_values(qs) for qs in windows], limit)
    return [row_data(v, now=now) for v in values]


def queue_keys(
    base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser, cursor: SortKey | None
) -> list[tuple[str, SortKey]]:
    """The ids a page with these filters shows, in order, with their places: what the
    consumer diffs against. One more than a page: whether a next page exists."""
    windows = [
        qs.values_list("q_due", "created_at", "id")  # type: ignore[misc]
        for qs in _windows(base, filters, user, cursor)
    ]
    return [
        (str(pk), sort_key(due, created, pk)) for due, created, pk in _first(windows, PAGE_SIZE + 1)
    ]


def rows_by_id(user: AnyUser, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    now = timezone.now()
    qs = _values(undecided_for(user).filter(pk__in=list(ids)))
    return {str(v["r_id"]): row_data(v, now=now) for v in qs}


def load_row(pk: str) -> dict[str, Any] | None:
    """One escalation as a row shows it, whatever its status or team: the consumer loads it
    once per change for every page in the process, and checks each page's access itself."""
    v = Escalation.objects.filter(pk=pk).values(**_ROW_VALUES, r_search=F("search_text")).first()
    return row_data(v) if v is not None else None


@dataclass
class Counts:
    """How many undecided escalations each filter value holds, and how many the filters match.

    Facet counts are over the reviewer's whole queue, or what a search matches (not narrowed
    by the other filters), so a number next to a filter never changes just because another
    filter was clicked.

    `total`, `matching` and `mine` are exact up to COUNT_CAP, and COUNT_CAP + 1 past it
    (shown "1,000+"). The facet counts are exact up to FACET_SAMPLE open; past it they are
    over the FACET_SAMPLE due soonest (`sampled`; the page says so). The cost of a page must
    not grow with the queue.
    """

    total: int = 0
    matching: int = 0
    mine: int = 0
    sampled: bool = False
    facets: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)

    def facet(self, name: str) -> list[tuple[str, str, int]]:
        return self.facets.get(name, [])

    @staticmethod
    def label(n: int) -> str:
        return f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"

    @property
    def total_label(self) -> str:
        return self.label(self.total)

    @property
    def matching_label(self) -> str:
        return self.label(self.matching)

    @property
    def mine_label(self) -> str:
        return self.label(self.mine)


# (facet, value expression, label expression); labels travel with values so the page needs
# no extra queries to name teams and agents.
_FACET_COLUMNS: dict[str, tuple[Any, Any]] = {
    "team": (F("team__slug"), F("team__name")),
    "workflow": (KeyTextTransform("workflow", "card"), KeyTextTransform("workflow", "card")),
    "agent": (KeyTextTransform("agent", "card"), KeyTextTransform("agent", "card")),
    "action_type": (KeyTextTransform("type", "card"), KeyTextTransform("type", "card")),
    "risk": (F("risk"), F("risk")),
    "status": (F("status"), F("status")),
}


def _capped_count_sql(qs: QuerySet[Escalation]) -> tuple[str, tuple[Any, ...]]:
    """SQL for min(count, COUNT_CAP + 1): stops reading at the cap."""
    inner, params = qs.values("pk").order_by()[: COUNT_CAP + 1].query.sql_with_params()
    return f"(SELECT COUNT(*) FROM ({inner}) c)", tuple(params)  # noqa: S608


def queue_counts(base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser) -> Counts:
    """All counts in one query: three capped counts, and the facets grouped five ways over
    the first FACET_SAMPLE rows of the queue (all of it, below that)."""
    mine = Q(claimed_by_id=user.pk) if user.is_authenticated else Q(pk__in=[])
    annotations: dict[str, Any] = {}
    for name, (value, label) in _FACET_COLUMNS.items():
        annotations[f"v_{name}"] = value
        annotations[f"l_{name}"] = label
    # The facets count what a search shows, not the whole queue (the other filters still
    # do not narrow them: a number beside a filter never changes because another was
    # clicked).
    total_sql, total_params = _capped_count_sql(base)
    mine_sql, mine_params = _capped_count_sql(base.filter(mine))
    matching_sql, matching_params = "NULL", ()  # no filter: what matches is the total
    if filters.q:
        # A search's matches, read once, in no order, stopping at COUNT_CAP + 1: a common
        # word matches thousands, and putting them in queue order to take the first
        # FACET_SAMPLE sorted all of them (50 ms at 100k open, measured). The facets are
        # over the first FACET_SAMPLE found; the count of a plain search is these counted.
        found = matching(base, filters.q).order_by().annotate(**annotations)
        inner, params = found.values(*annotations)[: COUNT_CAP + 1].query.sql_with_params()
        ctes = f"m AS ({inner}), q AS (SELECT * FROM m LIMIT {FACET_SAMPLE})"  # noqa: S608
        if not filters.condition(user):
            matching_sql = "(SELECT COUNT(*) FROM m)"
    else:
        sample = ordered(base).annotate(**annotations).values(*annotations)[:FACET_SAMPLE]
        inner, params = sample.query.sql_with_params()
        ctes = f"q AS ({inner})"
    if filters.condition(user):
        matching_sql, matching_params = _capped_count_sql(filters.narrow(base, user))
    # Subqueries built above from querysets; every value in them is a parameter.
    counted = f"{total_sql}, {matching_sql}, {mine_sql}, (SELECT COUNT(*) FROM q)"  # noqa: S608
    parts = [f"SELECT 'total', '', '', {counted}"]
    for name in _FACET_COLUMNS:
        parts.append(
            # Names come from _FACET_COLUMNS, never from input; values are parameters.
            f"SELECT '{name}', v_{name}, MIN(l_{name}), COUNT(*), 0, 0, 0 FROM q GROUP BY v_{name}"  # noqa: S608
        )
    # CTEs read several times: PostgreSQL materialises each once (one bounded read), and
    # the same SQL runs on SQLite for the embedded mode.
    sql = f"WITH {ctes} " + " UNION ALL ".join(parts)
    counts = Counts()
    with connection.cursor() as cursor:
        cursor.execute(sql, (*params, *total_params, *matching_params, *mine_params))
        for facet, value, label, n, matching_n, mine_n, sample_n in cursor.fetchall():
            if facet == "total":
                counts.total, counts.mine = n, mine_n
                counts.matching = n if matching_n is None else matching_n
                counts.sampled = sample_n >= FACET_SAMPLE
                continue
            if not value:
                value, label = "", "(no workflow)"
            counts.facets.setdefault(facet, []).append((str(value), str(label), n))
    for values in counts.facets.values():
        values.sort(key=lambda v: (-v[2], v[1]))
    risks = {v: n for v, _, n in counts.facet("risk")}
    counts.facets["risk"] = [(r.value, str(r.label), risks.get(r, 0)) for r in RISK_ORDER]
    counts.facets["status"] = [
        (s.value, str(s.label), dict((v, n) for v, _, n in counts.facet("status")).get(s, 0))
        for s in (EscalationStatus.OPEN, EscalationStatus.CLAIMED)
    ]
    # A selected value with nothing left in it still shows, at zero, so it can be cleared.
    for name in FACETS:
        selected = getattr(filters, name)
        if selected and selected not in {v for v, _, _ in counts.facet(name)}:
            counts.facets.setdefault(name, []).append((selected, selected, 0))
    return counts


@dataclass(frozen=True)
class FacetOption:
    value: str
    label: str
    count: int
    selected: bool
    query: str  # the page's query string after clicking this option


@dataclass(frozen=True)
class FacetGroup:
    name: str
    label: str
    options: list[FacetOption]


FACET_LABELS = {
    "status": "Status",
    "risk": "Risk",
    "team": "Team",
    "action_type": "Action",
    "agent": "Agent",
    "workflow": "Workflow",
}


def facet_groups(counts: Counts, filters: QueueFilters) -> list[FacetGroup]:
    return [
        FacetGroup(
            name=name,
            label=label,
            options=[
                FacetOption(
                    value=value,
                    label=text,
                    count=n,
                    selected=getattr(filters, name) == value,
                    query=filters.toggled(name, value),
                )
                for value, text, n in counts.facet(name)
            ],
        )
        for name, label in FACET_LABELS.items()
    ]


def row_data(v: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """What one row shows, worked out in Python once: the row partial only prints these.

    Django's template engine costs microseconds per variable lookup and much more per filter;
    at fifty rows a page (and one render per change for every open page) that was most of the
    page's time. Nothing here depends on who looks: the viewer's bits (is it mine?) are
    compared in the partial, so a pushed row is built once for every page that shows it.
    The facet values (team_slug, workflow, ...) ride along for QueueFilters.matches().
    """
    now = now or timezone.now()
    card = v["r_card"] if isinstance(v["r_card"], dict) else {}
    pk = str(v["r_id"])
    sla: datetime | None = v["r_sla"]
    action_type = card.get("type", "")
    tool = ACTION_TYPES.get(action_type)
    return {
        "id": pk,
        "key": sort_key(v["r_due"], v["r_created"], v["r_id"]),
        "url": _detail_url(pk),
        "status": v["r_status"],
        "risk": v["r_risk"],
        "type": action_type,
        "label": tool.label if tool is not None else action_type,
        "irreversible": tool is None or not tool.reversible,
        "title": card.get("title") or card.get("agent", ""),
        "customer": card.get("customer", ""),
        "customer_line": card.get("line", ""),
        "gist": card.get("gist", ""),
        "sla": sla.isoformat() if sla else "",
        "sla_text": timeuntil(sla, now) if sla else "",
        "why": card.get("why", ""),
        # An audit: of what already ran (judge it), or holding it before it runs ("held").
        "audit": card.get("audit", ""),
        "search": v.get("r_search") or "",
        "claimed_by_id": v["r_claimed_by_id"],
        "claimed_by": v["r_claimed_by"] or "",
        "team_id": v["r_team_id"],
        "team": v["r_team"],
        "team_slug": v["r_team_slug"],
        "agent": card.get("agent", ""),
        "workflow": card.get("workflow", ""),
        "confidence": card.get("confidence", ""),
        "created": v["r_created"].isoformat(),
        "age": timesince(v["r_created"], now),
    }


_DETAIL_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def _detail_url(pk: str) -> str:
    # One reverse() per process, not per row: a page is fifty of them.
    global _detail_template
    if _detail_template is None:
        _detail_template = reverse("review:detail", args=[_DETAIL_PLACEHOLDER])
    return _detail_template.replace(_DETAIL_PLACEHOLDER, pk)


_detail_template: str | None = None


def render_row(
    row: dict[str, Any], *, user: AnyUser, arrived: bool = False, oob: bool = False
) -> str:
    """The row's HTML (review.rows); `oob`: as an out-of-band swap of itself (claimed,
    released: same place, new state)."""
    return row_html(row, user=user, arrived=arrived, oob=oob)


def rows_html(rows: list[dict[str, Any]], user: AnyUser) -> str:
    return mark_safe("".join(row_html(r, user=user) for r in rows))  # noqa: S308 - escaped in rows.py


def render_queue_note(note: str) -> str:
    """The queue page's one status line (aria-live), swapped out of band."""
    return render_to_string("review/queue.html#note", {"note": note, "oob": True})


@dataclass(frozen=True)
class Page:
    """One page of the queue: its rows, where it starts, and whether more follow it."""

    rows: list[dict[str, Any]]
    more: bool

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]


def queue_page(
    base: QuerySet[Escalation],
    filters: QueueFilters,
    user: AnyUser,
    cursor: SortKey | None,
    *,
    common: bool = False,
) -> Page:
    # One row more than a page says whether a next page exists, without counting.
    rows = queue_rows(base, filters, user, cursor, limit=PAGE_SIZE + 1, common=common)
    return Page(rows=rows[:PAGE_SIZE], more=len(rows) > PAGE_SIZE)


def pager_context(filters: QueueFilters, ids: list[str], more: bool) -> dict[str, Any]:
    return {
        "filters": filters,
        "page_size": PAGE_SIZE,
        "next_query": filters.page_after(ids[-1]) if more and ids else "",
    }


def render_pager(filters: QueueFilters, ids: list[str], more: bool) -> str:
    return render_to_string(
        "review/queue.html#pager", {**pager_context(filters, ids, more), "oob": True}
    )


def counts_context(
    base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser
) -> dict[str, Any]:
    counts = queue_counts(base, filters, user)
    return {
        "counts": counts,
        "filters": filters,
        "facet_groups": facet_groups(counts, filters),
        "mine_query": filters.toggled("mine", ""),
        "facet_sample": FACET_SAMPLE,
    }


def queue_context(user: AnyUser, filters: QueueFilters) -> dict[str, Any]:
    """Everything the page (and the consumer's snapshot) renders: rows, counts, filters."""
    base = undecided_for(user)
    counts = counts_context(base, filters, user)
    # Counted first: a search matching past the cap is read in queue order (search.matching).
    common = bool(filters.q) and counts["counts"].matching > COUNT_CAP
    page = queue_page(base, filters, user, cursor_key(user, filters), common=common)
    return {
        "rows": page.rows,
        "rows_html": rows_html(page.rows, user),
        "page": page,
        "user": user,
        **pager_context(filters, page.ids, page.more),
        **counts,
    }


def render_snapshot(user: AnyUser, filters: QueueFilters) -> tuple[str, Page]:
    """The live region as out-of-band swaps, and the page it shows."""
    ctx = queue_context(user, filters)
    html = render_to_string("review/queue.html#snapshot", {**ctx, "oob": True})
    return html, ctx["page"]


def render_counts(user: AnyUser, filters: QueueFilters) -> str:
    ctx = counts_context(undecided_for(user), filters, user)
    return render_to_string("review/queue.html#counts", {**ctx, "user": user, "oob": True})
