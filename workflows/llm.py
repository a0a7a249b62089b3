"""The model interface agents call, and the offline deterministic model behind it.

The OpenAI-backed client implements the same `ModelClient` protocol; with no key set the
offline model runs, and the UI says so (`label`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelResult:
    data: dict[str, Any]
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    notes: list[str] = field(default_factory=list)


class ModelClient(Protocol):
    label: str

    def classify_ticket(self, *, subject: str, body: str) -> ModelResult: ...

    def draft_reply(
        self, *, subject: str, body: str, customer: str, category: str
    ) -> ModelResult: ...


_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("billing", ("refund", "charge", "charged", "invoice", "payment", "billing", "price")),
    ("bug", ("error", "crash", "broken", "bug", "fails", "not working", "500")),
    ("account", ("password", "login", "log in", "account", "2fa", "locked")),
    ("shipping", ("delivery", "shipping", "package", "tracking", "arrived")),
)
_URGENT = ("urgent", "asap", "immediately", "outage", "down", "lawyer", "legal", "cancel")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OfflineModel:
    """Keyword and rule based. Deterministic: the same ticket always gives the same answer.

    Confidence reflects how much evidence the rules found, so calibration is measurable.
    """

    label = "Offline deterministic model (rules, no LLM)"
    name = "offline-rules-v1"

    def classify_ticket(self, *, subject: str, body: str) -> ModelResult:
        text = f"{subject}\n{body}".lower()
        scores = {
            cat: sum(1 for kw in kws if re.search(rf"\b{re.escape(kw)}\b", text))
            for cat, kws in _CATEGORIES
        }
        category, hits = max(scores.items(), key=lambda kv: kv[1])
        if hits == 0:
            category = "other"
        urgent_hits = [w for w in _URGENT if re.search(rf"\b{re.escape(w)}\b", text)]
        urgency = "high" if urgent_hits else ("normal" if hits else "low")
        competing = sorted(scores.values(), reverse=True)
        ambiguous = len(competing) > 1 and competing[0] > 0 and competing[0] == competing[1]
        confidence = 0.55 + 0.15 * min(hits, 3) - (0.25 if ambiguous else 0.0)
        confidence = round(max(0.3, min(confidence, 0.97)), 2)
        notes = [f"matched {hits} {category} keyword(s)"]
        if urgent_hits:
            notes.append(f"urgency words: {', '.join(urgent_hits)}")
        if ambiguous:
            notes.append("two categories matched equally")
        return ModelResult(
            data={"category": category, "urgency": urgency, "confidence": confidence},
            model=self.name,
            input_tokens=_tokens(text),
            output_tokens=12,
            notes=notes,
        )

    def draft_reply(self, *, subject: str, body: str, customer: str, category: str) -> ModelResult:
        first = customer.split("@")[0].split(".")[0].capitalize() or "there"
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
        text = f"{subject} {body}".lower()
        # Replies promising money, or answering angry customers, are less certain.
        confidence = 0.9
        if "refund" in text:
            confidence -= 0.25
        if any(w in text for w in ("angry", "unacceptable", "lawyer", "legal")):
            confidence -= 0.2
        if category == "other":
            confidence -= 0.15
        return ModelResult(
            data={"reply": reply, "confidence": round(max(confidence, 0.3), 2)},
            model=self.name,
            input_tokens=_tokens(text),
            output_tokens=_tokens(reply),
        )


def get_model() -> ModelClient:
    return OfflineModel()
