"""The seed's second workflow: mention research.

Find mentions of a company in a set of publications (the corpus shipped in
`workflows/fixtures/publications/`), one async step per publication in parallel; judge the
sentiment, weighing recency and volume (every weight recorded in the trace); for negative
coverage draft three response strategies, verify them against the sources, and propose
`publish_response` — irreversible, so it goes to a person under the default policies.

The planner fans the `scan` template out into one step per publication: the plan (and its
width) is decided from the input and stored on the run before any step executes.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from .actions import execute_action, propose_action
from .engine import StepContext
from .models import Action, ActionStatus, TraceKind
from .specs import (
    InvalidInput,
    Mode,
    PlannedStep,
    Retry,
    StepResult,
    StepSpec,
    Wait,
    WorkflowSpec,
    digest,
    register,
)
from .tools import ACTION_TYPES, ActionType, Rendering, RenderKind, ToolError

CORPUS_DIR = Path(__file__).resolve().parent / "fixtures" / "publications"
HALF_LIFE_DAYS = 30.0
NEGATIVE_BELOW = -0.15
SENTIMENT_MODEL = "lexicon-v1 (offline, deterministic)"

_POSITIVE = (
    "award",
    "excellent",
    "impressive",
    "fast",
    "praised",
    "record",
    "reliable",
    "strong",
    "welcome",
    "friendly",
    "won",
    "boost",
    "hired",
)
_NEGATIVE = (
    "recall",
    "recalling",
    "injured",
    "injuries",
    "slow",
    "confusing",
    "frustrating",
    "fell",
    "probe",
    "worry",
    "failures",
    "poor",
    "outage",
    "halted",
    "weak",
    "pressure",
    "worrying",
    "complaints",
    "faulty",
    "ignores",
    "protest",
    "protested",
    "failed",
    "unacceptable",
    "delay",
)


# --- the corpus ----------------------------------------------------------------------------


@cache
def corpus() -> dict[str, dict[str, Any]]:
    """Publications by id, read once per process from the fixture files."""
    pubs = {}
    for path in sorted(CORPUS_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        pubs[data["id"]] = data
    return pubs


def article(article_id: str) -> dict[str, Any] | None:
    for pub in corpus().values():
        for art in pub["articles"]:
            if art["id"] == article_id:
                return {**art, "publication": pub["id"]}
    return None


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def sentiment(text: str) -> float:
    """-1..1 from lexicon hits; the offline stand-in for a model judge."""
    words = _words(text)
    pos = sum(1 for w in words if w in _POSITIVE)
    neg = sum(1 for w in words if w in _NEGATIVE)
    if pos == neg == 0:
        return 0.0
    return round((pos - neg) / (pos + neg), 3)


# --- planning ------------------------------------------------------------------------------


def _clean_input(input: dict[str, Any]) -> tuple[str, list[str]]:
    company = str(input.get("company", "")).strip()
    if not company or len(company) > 100:
        raise InvalidInput("mention research needs a company name (1-100 characters)")
    wanted = input.get("publications") or sorted(corpus())
    if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
        raise InvalidInput("publications must be a list of publication ids")
    unknown = [p for p in wanted if p not in corpus()]
    if unknown:
        raise InvalidInput(
            f"unknown publication(s): {', '.join(unknown)}; known: {', '.join(sorted(corpus()))}"
        )
    if input.get("as_of") is not None:
        try:
            date.fromisoformat(str(input["as_of"]))
        except ValueError:
            raise InvalidInput("as_of must be a date, YYYY-MM-DD") from None
    return company, list(dict.fromkeys(wanted))


def plan(spec: WorkflowSpec, input: dict[str, Any]) -> list[PlannedStep]:
    _, publications = _clean_input(input)
    scans = [
        spec.step("scan").planned(
            name=f"scan_{pub.replace('-', '_')}",
            params={"publication": pub},
            description=f"Find mentions in {corpus()[pub]['name']}",
        )
        for pub in publications
    ]
    names = [s.name for s in scans]
    return [
        *scans,
        spec.step("judge_sentiment").planned(depends_on=names),
        spec.step("draft_strategies").planned(depends_on=["judge_sentiment"]),
        spec.step("verify_draft").planned(depends_on=["draft_strategies"]),
        spec.step("propose_response").planned(depends_on=["verify_draft"]),
        spec.step("publish").planned(depends_on=["propose_response"]),
    ]


def initial_state(input: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "conversation": {
            "intent": f"find and answer negative coverage of {input.get('company', '')}",
            "messages": [],
        },
        "workspace": {"outputs": {}, "documents": []},
        "systemic": {"connected_systems": ["publication_corpus", "press_office"]},
    }


# --- steps ---------------------------------------------------------------------------------


def scan(ctx: StepContext) -> StepResult:
    """One publication: every sentence naming the company, with where it came from."""
    company = str(ctx.run.input["company"]).strip()
    pub = corpus()[ctx.params["publication"]]
    pattern = re.compile(rf"\b{re.escape(company)}\b", re.IGNORECASE)
    mentions = []
    for art in pub["articles"]:
        if not pattern.search(art["title"] + " " + art["body"]):
            continue
        hits = [s for s in _sentences(art["body"]) if pattern.search(s)] or [art["title"]]
        context = " ".join(_sentences(art["body"]))
        mentions.append(
            {
                "publication": pub["id"],
                "article": art["id"],
                "title": art["title"],
                "date": art["date"],
                "url": art["url"],
                "snippet": hits[0],
                "text": context,
            }
        )
    ctx.state.append(
        "workspace", "documents", {"publication": pub["id"], "mentions": len(mentions)}
    )
    ctx.trace(
        TraceKind.OBSERVED,
        f"{pub['name']}: {len(mentions)} article(s) mention {company}",
        articles=[m["article"] for m in mentions],
    )
    return {"publication": pub["id"], "mentions": mentions}


def _scan_has_sources(output: dict[str, Any]) -> str | None:
    for m in output.get("mentions", []):
        if article(m.get("article", "")) is None:
            return f"mention cites unknown article {m.get('article')!r}"
    return None


def _all_mentions(ctx: StepContext) -> list[dict[str, Any]]:
    mentions: list[dict[str, Any]] = []
    for entry in ctx.run.plan:
        if entry["template"] == "scan":
            mentions.extend(ctx.output_of(entry["name"]).get("mentions", []))
    return mentions


def judge_sentiment(ctx: StepContext) -> StepResult:
    """Weighted sentiment: recent coverage counts more (30-day half-life), and a publication's
    weight grows with its volume of coverage, with diminishing returns (log2(1 + n) / n per
    mention)."""
    mentions = _all_mentions(ctx)
    skipped = [
        e["name"] for e in ctx.run.plan if e["template"] == "scan" and not ctx.output_of(e["name"])
    ]
    if not mentions:
        ctx.trace(TraceKind.DECIDED, "no mentions found; nothing to judge")
        return {"label": "none", "score": 0.0, "mentions": 0, "negative": []}
    dates = [date.fromisoformat(m["date"]) for m in mentions]
    as_of = date.fromisoformat(str(ctx.run.input.get("as_of") or max(dates).isoformat()))
    per_pub: dict[str, int] = {}
    for m in mentions:
        per_pub[m["publication"]] = per_pub.get(m["publication"], 0) + 1
    weighed = []
    for m, d in zip(mentions, dates, strict=True):
        age = max((as_of - d).days, 0)
        recency = 0.5 ** (age / HALF_LIFE_DAYS)
        n = per_pub[m["publication"]]
        volume = math.log2(1 + n) / n
        score = sentiment(m["text"])
        weighed.append(
            {
                "article": m["article"],
                "publication": m["publication"],
                "age_days": age,
                "recency_weight": round(recency, 4),
                "volume_weight": round(volume, 4),
                "weight": round(recency * volume, 4),
                "sentiment": score,
            }
        )
    total = sum(w["weight"] for w in weighed) or 1.0
    overall = round(sum(w["weight"] * w["sentiment"] for w in weighed) / total, 3)
    label = (
        "negative"
        if overall < NEGATIVE_BELOW
        else "positive"
        if overall > -NEGATIVE_BELOW
        else "mixed"
    )
    negative = sorted(
        (w for w in weighed if w["sentiment"] < 0), key=lambda w: w["weight"], reverse=True
    )
    ctx.trace(
        TraceKind.DECIDED,
        f"sentiment {label} ({overall:+.2f}) over {len(mentions)} mention(s) in "
        f"{len(per_pub)} publication(s); {len(negative)} negative, weighed by recency "
        f"(half-life {HALF_LIFE_DAYS:g} days, as of {as_of}) and volume",
        model=SENTIMENT_MODEL,
        weights=weighed,
        per_publication=per_pub,
        skipped_publications=skipped,
    )
    return {
        "label": label,
        "score": overall,
        "mentions": len(mentions),
        "as_of": as_of.isoformat(),
        "negative": [w["article"] for w in negative],
    }


def _quote(article_id: str) -> str:
    art = article(article_id)
    if art is None:
        return ""
    scored = sorted(_sentences(art["body"]), key=sentiment)
    return scored[0] if scored else art["title"]


def draft_strategies(ctx: StepContext) -> StepResult:
    judged = ctx.output_of("judge_sentiment")
    company = str(ctx.run.input["company"]).strip()
    if judged.get("label") != "negative":
        ctx.trace(TraceKind.DECIDED, f"coverage is {judged.get('label')}: no response needed")
        return {"needed": False, "strategies": []}
    negative: list[str] = judged["negative"]
    top = negative[0]
    top_art = article(top) or {}
    outlets = sorted({(article(a) or {}).get("publication", "") for a in negative[:4]} - {""})
    strategies: list[dict[str, Any]] = [
        {
            "name": "correct the record",
            "title": f"{company} responds to “{top_art.get('title', top)}”",
            "body": f"{company} takes the concerns raised seriously. Reporting said: "
            f"“{_quote(top)}” We are publishing the full timeline and the facts behind it, "
            "and we will answer every question about it.",
            "sources": [top],
            "quotes": [{"article": top, "text": _quote(top)}],
        },
        {
            "name": "acknowledge and commit",
            "title": f"What {company} is changing",
            "body": f"Recent coverage ({len(negative)} articles) raised real problems. "
            + " ".join(f"“{_quote(a)}”" for a in negative[:2])
            + f" {company} accepts this criticism and commits to an independent safety "
            "review and faster support, with progress reported monthly.",
            "sources": negative[:2],
            "quotes": [{"article": a, "text": _quote(a)} for a in negative[:2]],
        },
        {
            "name": "engage the outlets",
            "title": f"{company} invites {', '.join(outlets)} to review its data",
            "body": f"{company} will offer the reporters behind this coverage interviews with "
            "its engineering leads and access to its incident data.",
            "sources": negative[:4],
            "quotes": [],
        },
    ]
    ctx.trace(
        TraceKind.DECIDED,
        "drafted three response strategies: " + "; ".join(s["name"] for s in strategies),
    )
    return {"needed": True, "strategies": strategies}


def verify_draft(ctx: StepContext) -> StepResult:
    """Every cited source must be among the mentions found; every quote must appear verbatim
    in its source; the company must be named. Failing strategies are dropped, with why."""
    drafted = ctx.output_of("draft_strategies")
    if not drafted.get("needed"):
        return {"verified": [], "rejected": [], "needed": False}
    company = str(ctx.run.input["company"]).strip()
    found = {m["article"] for m in _all_mentions(ctx)}
    verified, rejected = [], []
    for s in drafted["strategies"]:
        problems = [
            f"cites {a}, which is not among the mentions found"
            for a in s["sources"]
            if a not in found
        ]
        for q in s["quotes"]:
            art = article(q["article"])
            if art is None or q["text"] not in art["body"]:
                problems.append(f"quote not found verbatim in {q['article']}")
        if company.lower() not in (s["title"] + s["body"]).lower():
            problems.append("does not name the company")
        if problems:
            rejected.append({"name": s["name"], "problems": problems})
        else:
            verified.append(s)
    ctx.trace(
        TraceKind.DECIDED,
        f"verified {len(verified)} of {len(drafted['strategies'])} strategies against the sources"
        + (f"; rejected: {rejected}" if rejected else ""),
    )
    return {"needed": True, "verified": verified, "rejected": rejected}


def _verified_enough(output: dict[str, Any]) -> str | None:
    if output.get("needed") and not output.get("verified"):
        return "no strategy survived verification against the sources"
    return None


def propose_response(ctx: StepContext) -> StepResult:
    checked = ctx.output_of("verify_draft")
    if not checked.get("needed"):
        return {"action": None}
    best = checked["verified"][0]
    judged = ctx.output_of("judge_sentiment")
    action = propose_action(
        run=ctx.run,
        step_name=ctx.step.name,
        action_type="publish_response",
        payload={
            "company": str(ctx.run.input["company"]).strip(),
            "strategy": best["name"],
            "title": best["title"],
            "body": best["body"],
            "sources": best["sources"],
            "alternatives": [s["name"] for s in checked["verified"][1:]],
        },
        # Confidence falls with how negative and how broad the coverage is.
        confidence=round(max(0.3, 0.85 + min(judged.get("score", 0.0), 0.0) / 2), 2),
        rationale=f"coverage is negative ({judged.get('score', 0):+.2f} over "
        f"{judged.get('mentions', 0)} mentions); '{best['name']}' passed verification",
    )
    return {"action": str(action.pk)}


def publish(ctx: StepContext) -> StepResult:
    proposed = ctx.output_of("propose_response").get("action")
    if not proposed:
        return {"published": False, "why": "no response was needed"}
    action = Action.objects.get(pk=proposed)
    if action.status in (ActionStatus.AUTO_APPROVED, ActionStatus.APPROVED):
        action = execute_action(action=action)
    if action.status == ActionStatus.ESCALATED:
        return Wait("publish_response awaits a person", actions=(str(action.pk),))
    if action.status == ActionStatus.EXECUTED:
        ctx.trace(
            TraceKind.DECIDED, f"published the '{action.payload_to_execute['strategy']}' response"
        )
        return {"published": True, "result": action.result}
    decision = getattr(getattr(action, "escalation", None), "decision", None)
    reason = decision.reason if decision is not None else action.error or action.status
    ctx.trace(TraceKind.OBSERVED, f"not published ({action.status}): {reason}")
    return {"published": False, "why": reason}


# --- the action it proposes ----------------------------------------------------------------


def _publish_response(payload: dict[str, Any], key: str) -> dict[str, Any]:
    if not str(payload.get("body", "")).strip():
        raise ToolError("publish_response needs a body")
    if not payload.get("sources"):
        raise ToolError("publish_response must cite its sources")
    return {"statement_id": f"pr-{digest([payload, key])[:12]}", "channel": "press office"}


# Declared beside the workflow that proposes it: risk comes from this declaration.
ACTION_TYPES.setdefault(
    "publish_response",
    ActionType(
        name="publish_response",
        label="Publish a public response",
        reversible=False,
        customer_facing=True,
        required_fields=("company", "title", "body", "sources"),
        execute=_publish_response,
        # A public statement reads like a letter to everyone: title as its subject.
        rendering=Rendering(RenderKind.EMAIL, (("subject", "title"), ("body", "body"))),
    ),
)


class MentionInput(BaseModel):
    """`publications` (ids from the corpus; all when absent) and `as_of` (a date) are
    optional; which publications exist is checked when the run is planned."""

    model_config = ConfigDict(extra="allow")

    company: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    publications: list[str] | None = None
    as_of: date | None = None


MENTIONS = register(
    WorkflowSpec(
        name="mention_research",
        version=1,
        title="Mention research",
        agent="research-agent",
        input_schema=MentionInput,
        steps=(
            StepSpec(
                "scan",
                "Find mentions in one publication",
                scan,
                depends_on=(),
                mode=Mode.ASYNC,
                retry=Retry(max_attempts=3, backoff_seconds=1.0),
                timeout_seconds=60,
                success=_scan_has_sources,
                success_description="every mention cites an article in the corpus",
            ),
            StepSpec(
                "judge_sentiment",
                "Judge sentiment, weighing recency and volume",
                judge_sentiment,
                depends_on=(),
            ),
            StepSpec("draft_strategies", "Draft three response strategies", draft_strategies),
            StepSpec(
                "verify_draft",
                "Verify the drafts against the sources",
                verify_draft,
                mode=Mode.ASYNC,
                success=_verified_enough,
                success_description="at least one strategy verified against the sources",
            ),
            StepSpec("propose_response", "Propose publish_response for review", propose_response),
            StepSpec("publish", "Publish what a person approved", publish),
        ),
        planner=plan,
        initial_state=initial_state,
        timeout_seconds=7 * 24 * 3600,
    )
)
