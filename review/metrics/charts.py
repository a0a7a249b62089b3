"""Charts drawn on the server as SVG: no chart library, no script, nothing for the CSP to block."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

W, H = 560, 180
PAD_L, PAD_R, PAD_T, PAD_B = 40, 12, 12, 26


def _x(i: int, n: int) -> float:
    span = W - PAD_L - PAD_R
    return PAD_L + (span * i / (n - 1) if n > 1 else span / 2)


def _y(v: float, top: float) -> float:
    return PAD_T + (H - PAD_T - PAD_B) * (1 - (v / top if top else 0))


def _frame(top: float, percent: bool, labels: Sequence[str], *, bins: bool = False) -> list[str]:
    parts = []
    for frac in (0, 0.5, 1):
        y = _y(top * frac, top)
        text = f"{top * frac:.0%}" if percent else f"{top * frac:g}"
        parts.append(
            f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="axis" x="{PAD_L - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{text}</text>'
        )
    n = len(labels)
    span = W - PAD_L - PAD_R
    step = 1 if bins else max(1, n // 7)
    for i in range(0, n, step):
        # Bins: label i is the left edge of bar i (the last label closes the axis).
        x = PAD_L + span * i / (n - 1) if bins and n > 1 else _x(i, n)
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{H - 8}" '
            f'text-anchor="{anchor}">{escape(labels[i])}</text>'
        )
    return parts


def line_chart(
    series: Sequence[tuple[str, Sequence[float | None]]],
    labels: Sequence[str],
    *,
    percent: bool = True,
    title: str = "",
) -> SafeString:
    values = [v for _, vs in series for v in vs if v is not None]
    top = 1.0 if percent else float(max(1, math.ceil(max(values or [1]) * 1.1)))
    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
        *_frame(top, percent, labels),
    ]
    n = len(labels)
    for idx, (name, vs) in enumerate(series):
        # A gap in the data (a day with no events) breaks the line instead of faking a zero.
        segments: list[list[str]] = [[]]
        for i, v in enumerate(vs):
            if v is None:
                segments.append([])
            else:
                segments[-1].append(f"{_x(i, n):.1f},{_y(v, top):.1f}")
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline class="series s{idx}" points="{" ".join(seg)}"/>')
            elif len(seg) == 1:
                x, y = seg[0].split(",")
                parts.append(f'<circle class="series-dot s{idx}" cx="{x}" cy="{y}" r="2.5"/>')
        parts.append(
            f'<text class="legend s{idx}" x="{PAD_L + 6 + idx * 150}" y="{PAD_T + 10}">'
            f"{escape(name)}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped above


def calibration_chart(
    bins: Sequence[dict[str, Any]], *, threshold: float | None = None
) -> SafeString:
    """Bars: approval rate per confidence bin, whiskers: 95% interval, dashed: perfect
    calibration, and the current threshold as a vertical line."""
    n = len(bins)
    span = W - PAD_L - PAD_R
    bw = span / n
    parts = [
        f'<svg class="chart calibration" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="approval rate by confidence">',
        *_frame(1.0, True, [f"{b['low']:.1f}" for b in bins] + ["1.0"], bins=True),
    ]
    parts.append(
        f'<line class="ideal" x1="{PAD_L}" y1="{_y(0, 1):.1f}" x2="{W - PAD_R}" '
        f'y2="{_y(1, 1):.1f}"/>'
    )
    for i, b in enumerate(bins):
        x = PAD_L + i * bw
        if b["n"]:
            y = _y(b["rate"], 1)
            parts.append(
                f'<rect class="bar" x="{x + 3:.1f}" y="{y:.1f}" width="{bw - 6:.1f}" '
                f'height="{_y(0, 1) - y:.1f}"><title>{b["low"]:.1f}-{b["high"]:.1f}: '
                f"{b['approved']}/{b['n']} approved</title></rect>"
            )
            lo, hi = b["interval"]
            cx = x + bw / 2
            parts.append(
                f'<line class="whisker" x1="{cx:.1f}" x2="{cx:.1f}" '
                f'y1="{_y(lo, 1):.1f}" y2="{_y(hi, 1):.1f}"/>'
            )
            parts.append(
                f'<text class="count" x="{cx:.1f}" y="{_y(0, 1) - 3:.1f}" '
                f'text-anchor="middle">{b["n"]}</text>'
            )
    if threshold is not None:
        tx = PAD_L + span * threshold
        parts.append(
            f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="{PAD_T}" '
            f'y2="{_y(0, 1):.1f}"/><text class="axis threshold-label" x="{tx + 4:.1f}" '
            f'y="{PAD_T + 10}">threshold {threshold:.2f}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - numbers only, escaped text
