"""A database that cannot be reached is a 503 the client may retry: JSON with Retry-After on
the API, a styled page elsewhere — never Django's bare "Server Error (500)"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def database_down() -> Iterator[None]:
    """Every connection attempt from this thread (the test client's) is refused."""
    connection.close()
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = str(free_port())
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port


def _signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", ["/review/", "/runs/", "/metrics/"])
def test_pages_answer_a_styled_503_when_the_database_is_down(alice, path):
    client = _signed_in(alice)
    with database_down():
        response = client.get(path)
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    assert response["Content-Type"].startswith("text/html")
    body = response.content.decode()
    assert "briefly unavailable" in body and "caliber/app.css" in body
    assert "Server Error (500)" not in body


def test_the_api_answers_json_503_when_the_database_is_down(agent):
    from api.actions import create_api_token

    _, raw = create_api_token(agent=agent, name="down")
    client = Client(raise_request_exception=False)
    with database_down():
        response = client.get("/api/v1/escalations", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "The database is unavailable; retry shortly."}
    assert response["Retry-After"].isdigit()


def test_other_api_errors_keep_the_json_shape(agent, alice, monkeypatch):
    from api.actions import create_api_token

    _, raw = create_api_token(agent=agent, name="boom", reviewer=True, user=alice)

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("api.views.escalations_for", boom)
    response = Client(raise_request_exception=False).get(
        "/api/v1/escalations", headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error."}


def test_the_pool_timeout_and_connect_timeout_are_short_and_configurable():
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["connect_timeout"] == 3


def test_a_driver_error_that_escaped_djangos_wrapper_is_a_503_too(rf):
    """A server-side cursor (QuerySet.iterator) closed after its backend was terminated
    raises psycopg's own AdminShutdown, not Django's OperationalError (seen on /metrics/
    while backends were being terminated)."""
    import psycopg

    from config.errors import server_error

    for path, kind in (("/metrics/", "text/html"), ("/api/v1/runs", "application/json")):
        try:
            raise psycopg.errors.AdminShutdown("terminating connection")
        except psycopg.Error:
            response = server_error(rf.get(path))
        assert response.status_code == 503, path
        assert response["Content-Type"].startswith(kind)
        assert response["Retry-After"].isdigit()
