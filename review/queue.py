"""The queue's filters, queries, counts and its one row partial, shared by view and consumer.

Ordering is by SLA due time (soonest first; escalations without an SLA after those with
one, oldest first), with the primary key as the last tie-break so the order is total: the
consumer places a pushed row before its successor, which only works if "successor" is
well-defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.db.models import Case, F, IntegerField, Q, QuerySet, Value, When
from django.template.loader import render_to_string

from escalations.access import AnyUser, escalations_for
from escalations.models import UNDECIDED_STATUSES, Escalation, EscalationStatus
from workflows.tools import ACTION_TYPES

QUEUE_LIMIT = 200
_MAX_PARAM = 100


class Risk:
    """Declared risk of an action type: from the tool declaration, never the model's say-so."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    ORDER = (HIGH, MEDIUM, LOW)


def risk_of(action_type: str) -> str:
    tool = ACTION_TYPES.get(action_type)
    if tool is None or not tool.reversible:
        return Risk.HIGH
    if tool.customer_facing or tool.amount_field:
        return Risk.MEDIUM
    return Risk.LOW


def action_types_at(risk: str) -> list[str]:
    return [name for name in ACTION_TYPES if risk_of(name) == risk]


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

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> QueueFilters:
        def text(name: str) -> str:
            value = params.get(name, "")
            if isinstance(value, list):
                value = value[-1] if value else ""
            return str(value).strip()[:_MAX_PARAM]

        risk = text("risk")
        status = text("status")
        return cls(
            team=text("team"),
            workflow=text("workflow"),
            agent=text("agent"),
            action_type=text("action_type"),
            risk=risk if risk in Risk.ORDER else "",
            status=status if status in UNDECIDED_STATUSES else "",
            mine=text("mine") in ("1", "true", "on"),
        )

    def params(self) -> dict[str, str]:
        out = {k: getattr(self, k) for k in FACETS if getattr(self, k)}
        if self.mine:
            out["mine"] = "1"
        return out

    @property
    def query(self) -> str:
        return urlencode(self.params())

    @property
    def active(self) -> bool:
        return bool(self.params())

    def toggled(self, facet: str, value: str) -> str:
        """The query string for clicking `value` of `facet`: select it, or clear it if selected."""
        if facet == "mine":
            return replace(self, mine=not self.mine).query
        current = getattr(self, facet)
        changes: dict[str, Any] = {facet: "" if current == value else value}
        return replace(self, **changes).query

    def condition(self, user: AnyUser) -> Q:
        q = Q()
        if self.team:
            q &= Q(team__slug=self.team)
        if self.workflow:
            q &= Q(action__run__workflow=self.workflow)
        if self.agent:
            q &= Q(action__agent__name=self.agent)
        if self.action_type:
            q &= Q(action__action_type=self.action_type)
        if self.risk:
            q &= Q(action__action_type__in=action_types_at(self.risk))
        if self.status:
            q &= Q(status=self.status)
        if self.mine:
            q &= Q(claimed_by_id=user.pk) if user.is_authenticated else Q(pk__in=[])
        return q


def undecided_for(user: AnyUser) -> QuerySet[Escalation]:
    """Every undecided escalation this user may see (the access helper decides which)."""
    return escalations_for(user).filter(status__in=UNDECIDED_STATUSES)


def ordered(qs: QuerySet[Escalation]) -> QuerySet[Escalation]:
    return qs.order_by(F("sla_due_at").asc(nulls_last=True), "created_at", "id")


def queue_rows(
    base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser
) -> list[Escalation]:
    return list(
        ordered(base.filter(filters.condition(user)))
        .select_related("action", "action__run", "action__agent", "team", "claimed_by")
        # The run's state can be large and the row never shows it.
        .defer("action__run__state", "action__payload", "action__result")[:QUEUE_LIMIT]
    )


def queue_ids(base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser) -> list[str]:
    """The ids a page with these filters shows, in order: what the consumer diffs against."""
    ids = ordered(base.filter(filters.condition(user))).values_list("id", flat=True)
    return [str(pk) for pk in ids[:QUEUE_LIMIT]]


def rows_by_id(user: AnyUser, ids: list[str]) -> dict[str, Escalation]:
    qs = (
        undecided_for(user)
        .filter(pk__in=ids)
        .select_related("action", "action__run", "action__agent", "team", "claimed_by")
        .defer("action__run__state", "action__payload", "action__result")
    )
    return {str(e.pk): e for e in qs}


@dataclass
class Counts:
    """How many undecided escalations each filter value holds, and how many the filters match.

    Facet counts are over the reviewer's whole queue (not narrowed by the other filters), so
    a number next to a filter never changes just because another filter was clicked.
    """

    total: int = 0
    matching: int = 0
    mine: int = 0
    facets: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)

    def facet(self, name: str) -> list[tuple[str, str, int]]:
        return self.facets.get(name, [])


# (facet, value expression, label expression); labels travel with values so the page needs
# no extra queries to name teams and agents.
_FACET_COLUMNS = {
    "team": ("team__slug", "team__name"),
    "workflow": ("action__run__workflow", "action__run__workflow"),
    "agent": ("action__agent__name", "action__agent__name"),
    "action_type": ("action__action_type", "action__action_type"),
    "status": ("status", "status"),
}


def queue_counts(base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser) -> Counts:
    """All counts in one query: the access-scoped rows once, grouped six ways."""
    cond = filters.condition(user)
    mine = Q(claimed_by_id=user.pk) if user.is_authenticated else Q(pk__in=[])
    annotations: dict[str, Any] = {}
    for name, (value, label) in _FACET_COLUMNS.items():
        annotations[f"v_{name}"] = F(value)
        annotations[f"l_{name}"] = F(label)
    annotations["m_match"] = (
        Case(When(cond, then=Value(1)), default=Value(0), output_field=IntegerField())
        if cond
        else Value(1, output_field=IntegerField())
    )
    annotations["m_mine"] = Case(
        When(mine, then=Value(1)), default=Value(0), output_field=IntegerField()
    )
    rows = base.annotate(**annotations).values(*annotations).order_by()
    inner, params = rows.query.sql_with_params()
    parts = [
        "SELECT 'total', '', '', COUNT(*), COALESCE(SUM(m_match), 0), COALESCE(SUM(m_mine), 0) "
        "FROM q"
    ]
    for name in _FACET_COLUMNS:
        parts.append(
            # Names come from _FACET_COLUMNS, never from input; values are parameters.
            f"SELECT '{name}', v_{name}, MIN(l_{name}), COUNT(*), 0, 0 FROM q GROUP BY v_{name}"  # noqa: S608
        )
    # A CTE read six times: PostgreSQL materialises it once (one scan of the join), and the
    # same SQL runs on SQLite for the embedded mode.
    sql = f"WITH q AS ({inner}) " + " UNION ALL ".join(parts)
    counts = Counts()
    by_type: dict[str, int] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for facet, value, label, n, matching, mine_n in cursor.fetchall():
            if facet == "total":
                counts.total, counts.matching, counts.mine = n, matching, mine_n
                continue
            if value is None:
                value, label = "", "(no workflow)"
            counts.facets.setdefault(facet, []).append((str(value), str(label), n))
            if facet == "action_type":
                by_type[str(value)] = n
    for values in counts.facets.values():
        values.sort(key=lambda v: (-v[2], v[1]))
    risks = {r: 0 for r in Risk.ORDER}
    for action_type, n in by_type.items():
        risks[risk_of(action_type)] += n
    counts.facets["risk"] = [(r, r, risks[r]) for r in Risk.ORDER]
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


def _decorate(escalations: list[Escalation]) -> list[Escalation]:
    for esc in escalations:
        esc.risk = risk_of(esc.action.action_type)  # type: ignore[attr-defined]
    return escalations


def render_row(escalation: Escalation, *, user: AnyUser, arrived: bool = False) -> str:
    _decorate([escalation])
    return render_to_string(
        "review/queue.html#row",
        {"esc": escalation, "user": user, "arrived": arrived, "oob": False},
    )


def render_row_replacement(escalation: Escalation, *, user: AnyUser) -> str:
    """The row as an out-of-band swap of itself (claimed, released: same place, new state)."""
    _decorate([escalation])
    return render_to_string("review/queue.html#row", {"esc": escalation, "user": user, "oob": True})


def counts_context(
    base: QuerySet[Escalation], filters: QueueFilters, user: AnyUser
) -> dict[str, Any]:
    counts = queue_counts(base, filters, user)
    return {
        "counts": counts,
        "filters": filters,
        "facet_groups": facet_groups(counts, filters),
        "mine_query": filters.toggled("mine", ""),
        "queue_limit": QUEUE_LIMIT,
    }


def queue_context(user: AnyUser, filters: QueueFilters) -> dict[str, Any]:
    """Everything the page (and the consumer's snapshot) renders: rows, counts, filters."""
    base = undecided_for(user)
    return {
        "escalations": _decorate(queue_rows(base, filters, user)),
        "user": user,
        **counts_context(base, filters, user),
    }


def render_snapshot(user: AnyUser, filters: QueueFilters) -> tuple[str, list[str]]:
    """The live region as out-of-band swaps, and the ids it shows, in order."""
    ctx = queue_context(user, filters)
    html = render_to_string("review/queue.html#snapshot", {**ctx, "oob": True})
    return html, [str(e.pk) for e in ctx["escalations"]]


def render_counts(user: AnyUser, filters: QueueFilters) -> str:
    ctx = counts_context(undecided_for(user), filters, user)
    return render_to_string("review/queue.html#counts", {**ctx, "user": user, "oob": True})
