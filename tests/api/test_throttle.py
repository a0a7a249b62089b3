"""Guessing tokens: an address that keeps presenting bad ones is told to wait (429)."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

LIMIT = 5


@pytest.fixture(autouse=True)
def _low_limit(settings):
    settings.API_AUTH_FAILURES_PER_MINUTE = LIMIT


def _address() -> str:
    # An address of its own per test: the counters live in the shared cache for a minute.
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def _get(address: str, token: str):
    # An action nobody has: a good token gets 404, a bad one 401.
    return Client(REMOTE_ADDR=address).get(
        f"/api/v1/actions/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}
    )


def test_bad_tokens_are_refused_with_401_until_the_limit_then_429_with_retry_after():
    address = _address()
    codes = [_get(address, f"cal_guess{i}").status_code for i in range(LIMIT)]
    assert codes == [401] * LIMIT
    throttled = _get(address, "cal_guess-next")
    assert throttled.status_code == 429
    assert throttled.json()["detail"].startswith("Too many failed token attempts")
    assert 1 <= int(throttled["Retry-After"]) <= 60


def test_a_throttled_address_learns_nothing_even_from_a_good_token(agent_token):
    address = _address()
    for i in range(LIMIT):
        _get(address, f"cal_guess{i}")
    assert _get(address, agent_token[1]).status_code == 429


def test_other_addresses_and_good_tokens_are_not_slowed(agent_token):
    guesser, agent = _address(), _address()
    for i in range(LIMIT + 3):
        _get(guesser, f"cal_guess{i}")
    assert _get(agent, agent_token[1]).status_code == 404
    # Good tokens are not failures: an agent calling all day is never throttled.
    for _ in range(LIMIT + 3):
        assert _get(agent, agent_token[1]).status_code == 404
    assert _get(agent, "cal_wrong").status_code == 401
