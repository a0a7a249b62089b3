"""WCAG AA: text in our stylesheets has at least 4.5:1 contrast with what it sits on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHEETS = [
    ROOT / "static/caliber/app.css",
    ROOT / "static/caliber/runs.css",
    *sorted((ROOT / "review/metrics/static").rglob("*.css")),
]
HEX = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?$")


def luminance(colour: str) -> float:
    h = colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _palette() -> dict[str, str]:
    css = (ROOT / "static/caliber/app.css").read_text()
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", css))


def _resolve(value: str, palette: dict[str, str]) -> str | None:
    value = value.strip().split()[0] if value.strip() else ""
    var = re.match(r"var\(--([\w-]+)\)", value)
    if var:
        return palette.get(var.group(1))
    return value if HEX.match(value) else None


def _rules_with_both() -> list[tuple[str, str, str, str]]:
    palette = _palette()
    found = []
    for sheet in SHEETS:
        for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", sheet.read_text()):
            fg = re.search(r"(?<![-\w])color:\s*([^;]+)", body)
            bg = re.search(r"background(?:-color)?:\s*([^;]+)", body)
            if fg and bg:
                a, b = _resolve(fg.group(1), palette), _resolve(bg.group(1), palette)
                if a and b:
                    found.append((f"{sheet.name}: {selector.strip()}", a, b, ""))
    return found


def test_every_rule_that_sets_both_colours_is_readable():
    rules = _rules_with_both()
    assert len(rules) > 20
    poor = [(s, a, b, round(contrast(a, b), 2)) for s, a, b, _ in rules if contrast(a, b) < 4.5]
    assert poor == []


@pytest.mark.parametrize(
    ("text", "surface"),
    [
        ("muted", "bg"),
        ("muted", "card"),
        ("ink", "bg"),
        ("brand", "card"),
        ("brand", "bg"),
        ("ok", "card"),
        ("ok", "bg"),
        ("warn", "card"),
        ("warn", "bg"),
        ("danger", "card"),
    ],
)
def test_the_palettes_text_colours_are_readable_on_its_surfaces(text, surface):
    palette = _palette()
    assert contrast(palette[text], palette[surface]) >= 4.5


def test_white_on_the_buttons_is_readable():
    palette = _palette()
    for name in ("brand", "ok", "danger"):
        assert contrast("#ffffff", palette[name]) >= 4.5, name
