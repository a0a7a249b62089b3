"""The model interface every agent step calls, and its two implementations.

`OpenAIModel` speaks to OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp) with
structured outputs, an explicit timeout, and bounded retries of its own (429 honouring
Retry-After, 5xx, timeouts) inside a time budget. `OfflineModel` is deterministic keyword
and rule logic behind the same interface, used when no key or base URL is configured, and
labelled as such in the UI.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

from .retry import RetryPolicy
from .schemas import ModelOutput, response_format

log = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 20_000

# The waits between attempts of one model call: the delivery backoff (workflows.retry),
# started short because a step is waiting; the call's time budget, not a count, stops it.
MODEL_RETRY = RetryPolicy(first_delay=1.0, max_delay=30.0)


@dataclass
class Clock:
    """What the client reads the time budget from and waits on; tests swap in a fake one."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


CLOCK = Clock()


class ModelError(Exception):
    """The model could not be reached within the budget (network, 429s, 5xx, timeouts)."""


class ModelOutputError(Exception):
    """The model answered, but not with what was asked (not JSON, wrong shape, too big)."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    version: int
    system: str
    user: str
    model: str
    parameters: dict[str, Any]
    variables: dict[str, Any]


@dataclass(frozen=True)
class ModelResult:
    data: dict[str, Any]
    raw: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 1
    mean_logprob: float | None = None
    notes: list[str] = field(default_factory=list)


class ModelClient(Protocol):
    label: str
    name: str
    offline: bool

    def generate(
        self,
        *,
        prompt: RenderedPrompt,
        schema: type[ModelOutput],
        extra_messages: list[dict[str, str]] | None = None,
    ) -> ModelResult: ...


def parse_json_object(raw: str) -> dict[str, Any]:
    if len(raw) > MAX_OUTPUT_CHARS:
        raise ModelOutputError(
            f"output is {len(raw)} characters; the limit is {MAX_OUTPUT_CHARS}",
            raw[:MAX_OUTPUT_CHARS],
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelOutputError(f"output is not valid JSON: {exc.msg}", raw) from None
    if not isinstance(data, dict):
        raise ModelOutputError("output is JSON but not an object", raw)
    return data


# --- OpenAI and compatible servers ---------------------------------------------------------


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429/503 asks us to wait: retry-after-ms, retry-after (seconds or a date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIModel:
    offline = False

    def __init__(self) -> None:
        import openai

        self.name = settings.OPENAI_MODEL
        where = settings.OPENAI_BASE_URL or "OpenAI"
        self.label = f"{self.name} via {where}"
        # The SDK's own retries are off: ours honour Retry-After and the run's time budget.
        self.client = openai.OpenAI(
            api_key=settings.OPENAI_API_KEY or "not-needed-for-this-server",
            base_url=settings.OPENAI_BASE_URL or None,
            timeout=settings.OPENAI_TIMEOUT,
            max_retries=0,
        )

    def generate(
        self,
        *,
        prompt: RenderedPrompt,
        schema: type[ModelOutput],
        extra_messages: list[dict[str, str]] | None = None,
    ) -> ModelResult:
        import openai

        messages: list[Any] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
            *(extra_messages or []),
        ]
        params = prompt.parameters or {}
        kwargs: dict[str, Any] = {}
        if "temperature" in params:
            kwargs["temperature"] = params["temperature"]
        if "max_tokens" in params:
            kwargs["max_completion_tokens"] = params["max_tokens"]
        if settings.OPENAI_LOGPROBS:
            kwargs["logprobs"] = True
        model = prompt.model or self.name
        budget_ends = CLOCK.monotonic() + settings.OPENAI_BUDGET_SECONDS
        started = CLOCK.monotonic()
        last_error = ""
        for attempt in range(1, settings.OPENAI_MAX_ATTEMPTS + 1):
            remaining = budget_ends - CLOCK.monotonic()
            if remaining <= 0:
                break
            wait: float | None = None
            try:
                # Typed as Any: the SDK's overloads cannot follow a kwargs dict.
                create: Any = self.client.chat.completions.create
                response = create(
                    model=model,
                    messages=messages,
                    response_format=response_format(schema),
                    timeout=min(settings.OPENAI_TIMEOUT, remaining),
                    **kwargs,
                )
            except openai.RateLimitError as exc:
                last_error = f"429 rate limited: {exc.message}"
                wait = retry_after_seconds(exc.response.headers) or MODEL_RETRY.backoff(attempt)
            except openai.APIStatusError as exc:
                if exc.status_code < 500:
                    raise ModelError(
                        f"{exc.status_code} from the model server: {exc.message}"
                    ) from None
                last_error = f"{exc.status_code} from the model server"
                wait = retry_after_seconds(exc.response.headers) or MODEL_RETRY.backoff(attempt)
            except openai.APITimeoutError:
                last_error = "the model server timed out"
                wait = MODEL_RETRY.backoff(attempt)
            except openai.APIConnectionError as exc:
                last_error = f"could not reach the model server: {exc.message}"
                wait = MODEL_RETRY.backoff(attempt)
            else:
                return self._result(response, model, started, attempt)
            if wait is not None:
                if wait >= budget_ends - CLOCK.monotonic():
                    raise ModelError(
                        f"{last_error}; giving up: waiting {wait:.1f}s would exceed the "
                        f"{settings.OPENAI_BUDGET_SECONDS}s budget (attempt {attempt})"
                    )
                log.warning(
                    "model call %s attempt %d: %s; retrying in %.2fs",
                    prompt.name,
                    attempt,
                    last_error,
                    wait,
                )
                CLOCK.sleep(wait)
        raise ModelError(
            f"{last_error or 'no answer'} after {settings.OPENAI_MAX_ATTEMPTS} "
            f"attempts within the {settings.OPENAI_BUDGET_SECONDS}s budget"
        )

    def _result(self, response: Any, model: str, started: float, attempt: int) -> ModelResult:
        choice = response.choices[0]
        refusal = getattr(choice.message, "refusal", None)
        raw = choice.message.content or ""
        if refusal:
            raise ModelOutputError(f"the model refused: {refusal}", str(refusal))
        data = parse_json_object(raw)
        mean_logprob = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            values = [t.logprob for t in content if t.logprob is not None]
            mean_logprob = sum(values) / len(values) if values else None
        usage = response.usage
        return ModelResult(
            data=data,
            raw=raw,
            model=response.model or model,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_ms=(CLOCK.monotonic() - started) * 1000,
            attempts=attempt,
            mean_logprob=mean_logprob,
        )


# --- the offline deterministic model ---------------------------------------------------------

_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("billing", ("refund", "charge", "charged", "invoice", "payment", "billing", "price")),
    ("bug", ("error", "crash", "crashes", "broken", "bug", "fails", "not working", "500")),
    ("account", ("password", "login", "log in", "account", "2fa", "locked")),
    ("shipping", ("delivery", "shipping", "package", "tracking", "arrived")),
)
_URGENT = ("urgent", "asap", "immediately", "outage", "down", "lawyer", "legal", "cancel")
_REFUND_PROMISE = re.compile(
    r"\b(we|i)('ll| will| have| shall)?\s+(refund|credit|compensate)|\brefund(ed)? (you|your)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"\[[A-Z _]+\]|\{\{|\}\}|<insert", re.IGNORECASE)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _has(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def promises_refund(text: str) -> bool:
    return _REFUND_PROMISE.search(text) is not None


def has_placeholder(text: str) -> bool:
    return _PLACEHOLDER.search(text) is not None


class OfflineModel:
    """Keyword and rule based; the same input always gives the same answer.

    Confidence reflects how much evidence the rules found, so calibration is measurable.
    """

    label = "Offline deterministic model (rules, no LLM)"
    name = "offline-rules-v1"
    offline = True

    def generate(
        self,
        *,
        prompt: RenderedPrompt,
        schema: type[ModelOutput],
        extra_messages: list[dict[str, str]] | None = None,
    ) -> ModelResult:
        handler = getattr(self, "_" + prompt.name.replace(".", "_"), None)
        if handler is None:
            raise ModelError(f"the offline model has no rules for prompt {prompt.name!r}")
        data, notes = handler(prompt.variables)
        raw = json.dumps(data)
        return ModelResult(
            data=data,
            raw=raw,
            model=self.name,
            input_tokens=_tokens(prompt.system + prompt.user),
            output_tokens=_tokens(raw),
            notes=notes,
        )

    def _triage_classify(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        text = f"{v.get('subject', '')}\n{v.get('body', '')}".lower()
        scores = {cat: sum(1 for kw in kws if _has(text, kw)) for cat, kws in _CATEGORIES}
        category, hits = max(scores.items(), key=lambda kv: kv[1])
        if hits == 0:
            category = "other"
        urgent_hits = [w for w in _URGENT if _has(text, w)]
        urgency = "high" if urgent_hits else ("normal" if hits else "low")
        ranked = sorted(scores.values(), reverse=True)
        ambiguous = ranked[0] > 0 and ranked[0] == ranked[1]
        confidence = 0.55 + 0.15 * min(hits, 3) - (0.25 if ambiguous else 0.0)
        confidence = round(max(0.3, min(confidence, 0.97)), 2)
        notes = [f"matched {hits} {category} keyword(s)"]
        if urgent_hits:
            notes.append(f"urgency words: {', '.join(urgent_hits)}")
        unsure = ""
        if ambiguous:
            notes.append("two categories matched equally")
            unsure = "the ticket fits two categories equally"
        elif hits == 0:
            unsure = "no known topic in the ticket"
        return (
            {
                "category": category,
                "urgency": urgency,
                "confidence": confidence,
                "uncertain_about": unsure,
            },
            notes,
        )

    def _triage_draft_reply(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        customer = str(v.get("customer", ""))
        first = customer.split("@")[0].split(".")[0].capitalize() or "there"
        category = str(v.get("category", "other"))
        lines = {
            "billing": "I have looked into the charge on your account and passed it to billing "
            "with the details you sent; they will confirm the correction by email.",
            "bug": "Thank you for the report. I have reproduced the steps you described and "
            "filed them with our engineers; I will update you as soon as a fix ships.",
            "account": "For your security I have started an account recovery; follow the link "
            "in the email you will receive in the next few minutes.",
            "shipping": "I have checked the shipment and asked the carrier for a trace; you will "
            "hear from us within one business day.",
            "other": "Thank you for getting in touch. A member of our team will follow up.",
        }
        reply = f"Hi {first},\n\n{lines.get(category, lines['other'])}\n\nBest regards,\nSupport"
        text = f"{v.get('subject', '')} {v.get('body', '')}".lower()
        confidence = 0.9
        unsure = []
        if "refund" in text:
            confidence -= 0.25
            unsure.append("the customer asks for money back, which I may not promise")
        if any(w in text for w in ("angry", "unacceptable", "lawyer", "legal")):
            confidence -= 0.2
            unsure.append("the customer is upset; tone matters")
        if category == "other":
            confidence -= 0.15
            unsure.append("the request is outside the usual topics")
        return (
            {
                "reply": reply,
                "confidence": round(max(confidence, 0.3), 2),
                "uncertain_about": "; ".join(unsure),
            },
            [],
        )

    def _triage_propose(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        c_conf = float(v.get("classification_confidence", 0.5))
        return (
            {
                "actions": [
                    {
                        "action_type": "update_crm",
                        "payload": {
                            "ticket_id": v["ticket_id"],
                            "category": v["category"],
                            "urgency": v["urgency"],
                        },
                        "confidence": c_conf,
                        "rationale": "record the classification on the ticket",
                    },
                    {
                        "action_type": "send_reply",
                        "payload": {
                            "ticket_id": v["ticket_id"],
                            "to": v["customer"],
                            "body": v["reply"],
                        },
                        "confidence": float(v.get("draft_confidence", 0.5)),
                        "rationale": "answer the customer with the drafted reply",
                    },
                    {
                        "action_type": "route_to_team",
                        "payload": {"ticket_id": v["ticket_id"], "team": v["team"]},
                        "confidence": round(max(c_conf - 0.05, 0.0), 2),
                        "rationale": f"{v['category']} tickets are handled by {v['team']}",
                    },
                ]
            },
            [],
        )

    def _triage_judge_reply(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        reply = str(v.get("reply", ""))
        problems = []
        if promises_refund(reply):
            problems.append("the reply promises a refund, credit or compensation")
        if has_placeholder(reply):
            problems.append("the reply contains placeholder text")
        if len(reply.strip()) < 20:
            problems.append("the reply is too short to address the ticket")
        return {"ok": not problems, "problems": problems}, []

    def _triage_revise(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        payload = parse_json_object(str(v.get("payload", "{}")))
        answer = " ".join(str(v.get("answer", "")).split())
        kind = str(v.get("action_type", ""))
        revised, changed = revise_payload(kind, payload, answer)
        return (
            {
                "payload": revised,
                # The reviewer said what they want; a revision that did it is likelier to pass.
                "confidence": 0.85 if changed else 0.5,
                "rationale": f"revised as {v.get('reviewer') or 'the reviewer'} asked: {changed}"
                if changed
                else "could not tell what to change; sent back as it was",
            },
            [f"revision rule: {changed or 'none matched'}"],
        )

    def _escalation_summary(self, v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        unsure = str(v.get("unsure") or "").strip()
        summary = (
            f"{v['agent']} was working on {v['doing']}. It proposes to {v['proposal']} "
            f"(confidence {v['confidence']}). It needs a person because {v['reasons']}. "
            f"At stake: {v['stakes']}."
            + (f" The agent is unsure about: {unsure}." if unsure else "")
        )
        return {"summary": summary[:1500]}, []


_TEAMS = ("Billing", "Engineering", "Support", "Logistics")
_SIGN_OFF = "\n\nBest regards,"


def _second_person(text: str) -> str:
    """'their order number' (about the customer, to the reviewer) -> 'your order number'."""
    swaps = {"their": "your", "them": "you", "they": "you", "theirs": "yours", "he": "you"}
    return " ".join(swaps.get(w.lower(), w) for w in text.split())


def _add_paragraph(body: str, paragraph: str) -> str:
    if _SIGN_OFF in body:
        head, tail = body.split(_SIGN_OFF, 1)
        return f"{head.rstrip()}\n\n{paragraph}{_SIGN_OFF}{tail}"
    return f"{body.rstrip()}\n\n{paragraph}"


def revise_payload(kind: str, payload: dict[str, Any], answer: str) -> tuple[dict[str, Any], str]:
    """The offline model's revision: do what a reviewer's short instruction asks, by rules.
    Returns the revised payload and what changed ('' if no rule applied)."""
    text = answer.strip().rstrip(".!")
    low = text.lower()
    revised = dict(payload)
    if kind == "send_reply" and isinstance(payload.get("body"), str):
        body = str(payload["body"])
        ask = re.search(
            r"\bask (?:them |the customer |him |her )?(?:for|about) (.+?)(?: first)?$", low
        )
        if ask:
            wanted = _second_person(text[ask.start(1) : ask.end(1)])
            line = f"Before we go further, could you send us {wanted}?"
            revised["body"] = _add_paragraph(body, line)
            # Said to the reviewer, so in the reviewer's words ("their order number"), not
            # the customer's ("your order number", which read as if addressed to them).
            return revised, f"asked the customer for {text[ask.start(1) : ask.end(1)]}"
        if re.search(r"\bapologi[sz]e\b|\bsay sorry\b", low):
            revised["body"] = _add_paragraph(body, "I am sorry for the trouble this has caused.")
            return revised, "added an apology"
        say = re.search(r"\b(?:tell|remind) (?:them|the customer) (?:that )?(.+)$", low)
        if say:
            said = _second_person(text[say.start(1) : say.end(1)])
            revised["body"] = _add_paragraph(body, said[:1].upper() + said[1:] + ".")
            return revised, "told the customer what the reviewer asked"
        if promises_refund(body) and "refund" in low:
            kept = [s for s in re.split(r"(?<=[.!?])\s+", body) if not promises_refund(s)]
            revised["body"] = " ".join(kept)
            return revised, "removed the refund promise"
        if text:
            revised["body"] = _add_paragraph(
                body, _second_person(text)[:1].upper() + _second_person(text)[1:] + "."
            )
            return revised, "added the reviewer's point to the reply"
        return revised, ""
    if kind == "route_to_team":
        team = next((t for t in _TEAMS if t.lower() in low), None)
        if team and team != payload.get("team"):
            revised["team"] = team
            return revised, f"routed to {team} instead"
        return revised, ""
    if text:
        revised["note"] = text
        return revised, "recorded the reviewer's note"
    return revised, ""


def get_model() -> ModelClient:
    if settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL:
        return OpenAIModel()
    return OfflineModel()


def model_label() -> str:
    if settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL:
        where = settings.OPENAI_BASE_URL or "OpenAI"
        return f"{settings.OPENAI_MODEL} via {where}"
    return OfflineModel.label
