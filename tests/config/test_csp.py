"""The content security policy: 'self' plus a per-response nonce, never 'unsafe-inline' —
the admin included, whose own tags carry the nonce (Django 6.1's admin is CSP-ready)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def _directives(header: str) -> dict[str, str]:
    return {part.split()[0]: part.strip() for part in header.split(";") if part.strip()}


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/escalations/autonomypolicy/",
        "/admin/escalations/autonomypolicy/add/",
        "/review/",
    ],
)
def test_every_page_has_a_csp_without_unsafe_inline(admin_user, path):
    client = Client()
    client.force_login(admin_user)
    response = client.get(path)
    assert response.status_code == 200, path
    header = response["Content-Security-Policy"]
    assert "unsafe-inline" not in header and "unsafe-eval" not in header
    directives = _directives(header)
    assert directives["script-src"].startswith("script-src 'self'")
    assert directives["object-src"] == "object-src 'none'"


def test_the_nonce_in_the_header_is_the_one_the_admins_tags_carry(admin_user):
    client = Client()
    client.force_login(admin_user)
    response = client.get("/admin/escalations/autonomypolicy/add/")
    tags = set(re.findall(r'nonce="([^"]+)"', response.text))
    if not tags:
        pytest.skip("this admin page uses no nonce")
    (nonce,) = tags
    assert f"'nonce-{nonce}'" in _directives(response["Content-Security-Policy"])["script-src"]
    # A new nonce per response.
    again = client.get("/admin/escalations/autonomypolicy/add/")
    assert f"'nonce-{nonce}'" not in again["Content-Security-Policy"]
