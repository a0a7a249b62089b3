"""The queue row's HTML, written in Python: the one markup for a row, used by the page, its
htmx swaps and the consumer's pushes (review.queue.render_row).

A page is fifty rows and each push renders one for every open page that shows it. Through
the template engine a row cost ~100 µs (a variable lookup or an {% if %} costs microseconds
there), half the page's server time at 100k open once its queries were cheap; here it is
a format string. Every value is escaped with Django's own escape(); nothing else is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils.html import escape

from escalations.access import AnyUser


def _e(value: Any) -> str:
    return str(escape(value))


def row_html(
    row: Mapping[str, Any], *, user: AnyUser, arrived: bool = False, oob: bool = False
) -> str:
    classes = f"row row-{_e(row['status'])} risk-{_e(row['risk'])}"
    mine = bool(row["claimed_by_id"]) and row["claimed_by_id"] == user.pk
    if mine:
        classes += " mine"
    if arrived:
        classes += " arrived"
    title = _e(row["title"])
    if row["sla"]:
        sla = (
            f'<time class="sla" datetime="{_e(row["sla"])}" data-due="{_e(row["sla"])}">'
            f"due in {_e(row['sla_text'])}</time>"
        )
    else:
        sla = '<span class="sla none">no SLA</span>'
    customer = ""
    if row["customer_line"]:
        who = f"{_e(row['customer'])}: " if row["customer"] else ""
        customer = f'<span class="customer">{who}“{_e(row["customer_line"])}”</span>'
    if mine:
        state = "claimed by you"
    elif row["claimed_by_id"]:
        state = f"claimed by {_e(row['claimed_by'])}"
    else:
        state = "unclaimed"
    swap = ' hx-swap-oob="true"' if oob else ""
    irreversible = ' data-irreversible="1"' if row["irreversible"] else ""
    workflow = f'<span class="workflow">{_e(row["workflow"])}</span>' if row["workflow"] else ""
    audit = ""
    if row.get("audit") == "ran":
        audit = (
            '<span class="badge audit" title="It ran on its own under policy: judge whether it '
            'was right">audit · already ran</span>'
        )
    elif row.get("audit"):
        audit = (
            '<span class="badge audit" title="Sampled for audit: it runs only if you approve">'
            "audit · before it runs</span>"
        )
    return (
        f'<article id="esc-{row["id"]}" class="{classes}"'
        f'{swap} data-id="{row["id"]}"{irreversible}>'
        f'<input class="pick" type="checkbox" form="bulk-form" name="ids" value="{row["id"]}"'
        f' aria-label="Select: {title}">'
        f'<a class="row-link" href="{_e(row["url"])}" hx-disable>'
        f'<div class="row-main">'
        f'<span class="risk-badge risk-{_e(row["risk"])}">{_e(row["risk"])}</span>'
        f'<span class="badge type" title="{_e(row["label"])}">{_e(row["type"])}</span>'
        f"{audit}"
        f'<span class="title">{title}</span>{sla}</div>'
        f'<div class="row-gist">{customer}<span class="proposal">{_e(row["gist"])}</span></div>'
        f'<div class="row-why"><span class="muted">why:</span> '
        f"{_e(row['why'] or 'policy requires review')}</div>"
        f'<div class="row-meta"><span class="state">{state}</span>'
        f'<span class="team">{_e(row["team"])}</span>'
        f'<span class="agent">{_e(row["agent"])}</span>{workflow}'
        f'<span class="conf">confidence {_e(row["confidence"])}</span>'
        f'<time class="age" datetime="{_e(row["created"])}">raised {_e(row["age"])} ago</time>'
        f"</div></a></article>"
    )
