"""Junk in the address never reaches a 500, and every error a person can meet is a page of
ours (with the navigation), not Django's bare one."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from escalations.actions import claim_escalation
from tests.review.factories import escalate, logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def escalation(agent, policies):
    return escalate(agent, subject="Refund for order 1042")


@pytest.mark.parametrize(
    "url",
    [
        "/review/?team=%00",
        "/review/?agent=x%00y&risk=high",
        "/review/?workflow=%01",
        "/review/?%00=1",
        "/runs/?status=%00",
        "/runs/?workflow=%00",
        "/metrics/?workflow=%00",
        "/metrics/?agent=%00&period=7",
        "/admin/escalations/escalation/?q=%00",
        "/admin/escalations/autonomypolicy/?action_type__exact=%00",
    ],
)
def test_a_nul_or_control_character_in_a_filter_is_a_400_page(admin_user, url):
    response = logged_in(admin_user).get(url)
    assert response.status_code == 400
    assert "That address doesn't make sense here" in response.text
    assert 'class="topbar"' in response.text  # ours, with the navigation


@pytest.mark.parametrize(
    "url",
    [
        "/review/?team=%3Cscript%3E&risk=zzz&status=nope&after=not-a-uuid",
        "/review/?team=" + "x" * 5000,
        "/review/?mine=maybe&action_type=%E2%9C%93",
        "/runs/?status=zzz&workflow=%3Cb%3E",
    ],
)
def test_other_junk_in_a_filter_gives_an_empty_or_unfiltered_page(alice, escalation, url):
    response = logged_in(alice).get(url)
    assert response.status_code == 200


def test_junk_metrics_filters_are_a_400_that_says_which(alice):
    response = logged_in(alice).get("/metrics/?agent=abc&period=999&action_type=nope&workflow=x")
    assert response.status_code == 400
    assert "no workflow named" in response.text and 'class="topbar"' in response.text


def test_an_unknown_team_filter_matches_nothing(alice, escalation):
    html = logged_in(alice).get("/review/?team=%3Cscript%3E").text
    assert f'id="esc-{escalation.pk}"' not in html
    assert "<script>" not in html.split("</head>")[1]


def test_another_teams_escalation_is_our_404_page(bob, escalation):
    response = logged_in(bob).get(reverse("review:detail", args=[escalation.pk]))
    assert response.status_code == 404
    assert "Nothing here for you" in response.text
    assert "belongs to a team you are not on" in response.text
    assert 'class="topbar"' in response.text and "Log out" in response.text
    assert "Refund for order 1042" not in response.text


def test_an_unknown_address_is_our_404_page(alice):
    response = logged_in(alice).get("/no/such/page/")
    assert response.status_code == 404
    assert "Nothing here for you" in response.text


def test_a_reviewer_operating_a_run_gets_our_403_page(alice, escalation):
    run = escalation.action.run
    response = logged_in(alice).post(reverse("runs:retry", args=[run.pk]), {"reason": "x"})
    assert response.status_code == 403
    assert "You can't do that here" in response.text
    assert "Only admins operate runs." in response.text


def test_the_500_page_needs_no_request():
    from django.template.loader import render_to_string

    html = render_to_string("500.html")
    assert "Something went wrong on our side" in html and "app.css" in html


def test_the_base_layout_has_a_live_region_with_text_not_css(alice, escalation):
    html = logged_in(alice).get(reverse("review:queue")).text
    assert 'id="live-announcer"' in html and 'aria-live="polite"' in html


def test_no_template_carries_inline_script_style_or_handlers():
    """The CSP (no unsafe-inline) would block them: JS and CSS live in static files."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in list((root / "templates").rglob("*.html")):
        text = path.read_text()
        if re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text) or re.search(
            r"\s(style|on[a-z]+)=", text
        ):
            offenders.append(str(path.relative_to(root)))
    assert not offenders


def test_claim_conflicts_are_unchanged_for_non_htmx_posts(alice, carol, escalation):
    claim_escalation(escalation_id=escalation.pk, user=alice)
    response = logged_in(carol).post(reverse("review:claim", args=[escalation.pk]))
    assert response.status_code == 302


def test_an_expired_form_token_is_our_page_and_changes_nothing(alice, escalation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("review:claim", args=[escalation.pk]))
    assert response.status_code == 403
    assert "This page was open too long" in response.text
    escalation.refresh_from_db()
    assert escalation.claimed_by is None
