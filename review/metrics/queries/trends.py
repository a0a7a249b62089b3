"""Trends and breakdowns: per day, and by action type, agent or workflow."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from escalations.models import AgentProfile, Verdict
from workflows.models import (
    RunStatus,
)

from .scope import APPROVED, EDITED, Scope, outcome_totals, rate


def daily_trend(scope: Scope) -> list[dict[str, Any]]:
    """Per day: runs, completion, escalation rate, approval rate."""
    days: dict[date, dict[str, Any]] = {}
    start = scope.since.date()
    for i in range((scope.until.date() - start).days + 1):
        d = start + timedelta(days=i)
        days[d] = {
            "day": d,
            "runs": 0,
            "succeeded": 0,
            "finished": 0,
            "actions": 0,
            "escalated": 0,
            "decisions": 0,
            "approved": 0,
        }
    finished_statuses = {
        RunStatus.SUCCEEDED,
        RunStatus.HANDED_OFF,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    }
    for key, n in scope.run_counts().items():
        if key[0] in days:
            on_day = days[key[0]]
            on_day["runs"] += n
            on_day["succeeded"] += n if key[3] == RunStatus.SUCCEEDED else 0
            on_day["finished"] += n if key[3] in finished_statuses else 0
    for day, totals in outcome_totals(scope.action_counts(), 0).items():
        if day in days:
            days[day].update(actions=totals["total"], escalated=totals["review"])
    for c in scope.decision_counts():
        if c.day in days:
            days[c.day]["decisions"] += c.n
            days[c.day]["approved"] += c.n if c.kind == APPROVED else 0
    out = []
    for d in sorted(days):
        row: dict[str, Any] = days[d]
        row["completion_rate"] = rate(row["succeeded"], row["finished"])
        row["escalation_rate"] = rate(row["escalated"], row["actions"])
        row["approval_rate"] = rate(row["approved"], row["decisions"])
        out.append(row)
    return out


BREAKDOWNS = ("action_type", "agent", "workflow")


def breakdowns(scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """Rates per action type, per agent and per workflow: one read of the action counts and
    one grouped decision query serve all three."""
    counts = scope.action_counts()
    names = dict(AgentProfile.objects.values_list("pk", "name"))
    decided = scope.decision_counts()

    def label(by: str, agent_id: int, workflow: str | None, action_type: str) -> str:
        value = {"action_type": action_type, "agent": names.get(agent_id), "workflow": workflow}
        return value[by] or "(API)"

    out = {}
    for by in BREAKDOWNS:
        rows: dict[str, dict[str, Any]] = {}
        for key, n in counts.items():
            row = rows.setdefault(
                label(by, key[1], key[2], key[3]),
                {"actions": 0, "auto": 0, "review": 0, "block": 0},
            )
            row["actions"] += n
            if key[4] in row:
                row[key[4]] += n
        for row in rows.values():
            row["autonomous_share"] = rate(row["auto"], row["actions"])
            row["escalation_rate"] = rate(row["review"], row["actions"])
            row["blocked"] = row["block"]
        judged: dict[str, dict[str, int]] = {}
        for c in decided:
            name = label(by, c.agent_id, c.workflow, c.action_type)
            acc = judged.setdefault(
                name, {"n": 0, "approved": 0, "edited": 0, "rejected": 0, "responded": 0}
            )
            acc["n"] += c.n
            if c.kind in (APPROVED, EDITED):
                acc[c.kind] += c.n
            elif c.kind == Verdict.RESPOND:
                # Its own verdict: answered (and revised), not refused.
                acc["responded"] += c.n
            else:
                acc["rejected"] += c.n
        for name, acc in judged.items():
            row = rows.setdefault(name, {"actions": 0})
            n = acc["n"]
            row.update(
                decisions=n,
                approval_rate=rate(acc["approved"], n),
                edit_rate=rate(acc["edited"], n),
                reject_rate=rate(acc["rejected"], n),
                respond_rate=rate(acc["responded"], n),
                override_rate=rate(acc["edited"] + acc["rejected"] + acc["responded"], n),
            )
        out[by] = sorted(
            ({"key": name, **row} for name, row in rows.items()),
            key=lambda r: (-int(r.get("actions") or 0), str(r["key"])),
        )
    return out


def breakdown(scope: Scope, by: str) -> list[dict[str, Any]]:
    """Rates per action type, agent or workflow."""
    return breakdowns(scope)[by]
