"""The last word on a request that raised: a database that is down, or that dropped our
connection, is a 503 the client may retry — JSON on the API, a page of its own elsewhere —
never Django's bare "Server Error (500)".

Django calls the 500 handler inside the `except` that caught the exception (under ASGI too:
asgiref re-raises it in the thread it hands the handler to), so `sys.exc_info()` names it,
wherever it was raised: a view, a template, the session middleware saving on the way out.
"""

from __future__ import annotations

import sys

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults

# Seconds a client is asked to wait: about one pool timeout, the time a retry costs anyway.
RETRY_AFTER_SECONDS = 5
API_PREFIX = "/api/"


def database_unavailable(exc: BaseException | None) -> bool:
    """Connection refused or timed out, the pool's wait exhausted (PoolTimeout is an
    OperationalError), a backend terminated under us, a statement cancelled by its timeout,
    or a connection already closed. The driver's own classes too: a server-side cursor
    (QuerySet.iterator) closed by Django outside its error wrapper raises psycopg's
    AdminShutdown as it is, and a backend terminated mid-iteration gave a 500."""
    return isinstance(
        exc, OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError
    )


def unavailable(request: HttpRequest) -> HttpResponse:
    response: HttpResponse
    if request.path.startswith(API_PREFIX):
        response = JsonResponse(
            {"detail": "The database is unavailable; retry shortly."}, status=503
        )
    else:
        # No RequestContext: its context processors (the user, the model label) would read
        # the very database that is down.
        response = HttpResponse(render_to_string("503.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    if database_unavailable(sys.exc_info()[1]):
        return unavailable(request)
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": "Internal server error."}, status=500)
    return defaults.server_error(request)
