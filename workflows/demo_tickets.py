"""A small generator of plausible support tickets for the demo stream and the benchmarks."""

from __future__ import annotations

import random
from typing import Any

_TICKETS: tuple[tuple[str, str], ...] = (
    (
        "Charged twice for my subscription",
        "Hi, I was charged twice this month on my card. Can you refund the duplicate payment?",
    ),
    (
        "App crashes on startup",
        "Since the last update the app shows an error and crashes "
        "every time I open it. Nothing works.",
    ),
    (
        "Can't log in to my account",
        "I reset my password but the login still fails and now my account is locked.",
    ),
    (
        "Where is my package?",
        "My delivery was due on Monday and the tracking page has not "
        "changed. When will the package arrive?",
    ),
    (
        "URGENT: production outage",
        "Our whole team is down, the API returns 500 errors. This is "
        "urgent, we need help immediately.",
    ),
    (
        "Invoice has the wrong price",
        "The invoice for March shows the old price, please correct the billing.",
    ),
    (
        "Refund or I call my lawyer",
        "This is unacceptable. I want a refund today or my lawyer will be in touch.",
    ),
    ("Question about your roadmap", "Do you plan to support dark mode at some point?"),
    ("2FA codes not arriving", "I no longer receive 2fa codes by SMS, so I cannot log in."),
    ("Package arrived damaged", "The package arrived broken; the delivery box was crushed."),
)
_NAMES = ("ada", "grace", "linus", "margaret", "alan", "barbara", "ken", "radia", "donald")
_DOMAINS = ("example.com", "example.org", "example.net")


def make_ticket(rng: random.Random, number: int) -> dict[str, Any]:
    subject, body = rng.choice(_TICKETS)
    name = rng.choice(_NAMES)
    return {
        "ticket_id": f"T-{number:06d}",
        "subject": subject,
        "body": body,
        "customer": f"{name}.{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}",
    }
