"""Putting untrusted text (agent output, ticket text, names) into Slack's mrkdwn safely.

Slack parses `<...>` as links and mentions (`<!channel>`, `<@U123>`, `<#C1>`), so `&`, `<`
and `>` must become entities; that is Slack's whole escaping rule. On top of it, a bare
`@channel` / `@here` / `@everyone` gets a zero-width space so that no client or future
`link_names` setting can turn agent text into a ping.
"""

from __future__ import annotations

import re

_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
ZWSP = "\u200b"


def escape(text: object) -> str:
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub(lambda m: "@" + ZWSP + m.group(1), s)


def escape_within(text: object, limit: int) -> str:
    """Escaped text no longer than `limit` characters, cut on the raw text (never inside an
    entity) and marked with an ellipsis."""
    raw = str(text)
    out = escape(raw)
    if len(out) <= limit:
        return out
    n = min(len(raw), limit)
    while n > 0:
        out = escape(raw[:n].rstrip()) + "…"
        if len(out) <= limit:
            return out
        n -= max(1, (len(out) - limit) // 2)
    return "…"


def plain_within(text: object, limit: int) -> str:
    """For plain_text objects, which Slack shows literally (no escaping, no mentions)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def quote(text: str) -> str:
    """Block-quote already escaped text (the `>` markers are ours, not the text's)."""
    return "\n".join(">" + line for line in text.splitlines() or [""])
