"""Agent-written text (and the customer's) is shown inside hx-disable containers: even an
htmx attribute that escaped escaping would do nothing there."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.review.factories import escalate, logged_in

pytestmark = pytest.mark.django_db

HTMX = '<div hx-get="/admin/" hx-trigger="load">x</div>'


def test_the_summary_payload_ticket_and_trace_are_inside_hx_disable(alice, agent, policies):
    esc = escalate(agent, subject=HTMX, body=HTMX)
    html = logged_in(alice).get(reverse("review:detail", args=[esc.pk])).text
    for cls in ("lede", "state", "trace", "side-by-side"):
        assert re.search(rf'<(p|pre|ol|div) class="{cls}" hx-disable>', html), cls
    assert 'hx-get="/admin/"' not in html


def test_queue_rows_and_the_run_title_are_inside_hx_disable(alice, agent, policies):
    esc = escalate(agent, subject=HTMX, body=HTMX)
    client = logged_in(alice)
    assert 'class="row-link" href="' in client.get(reverse("review:queue")).text
    assert re.search(r'class="row-link" href="[^"]+" hx-disable>', client.get("/review/").text)
    run = client.get(reverse("runs:detail", args=[esc.action.run_id])).text
    assert "<h1 hx-disable>" in run
