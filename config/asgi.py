"""ASGI entry point: HTTP through Django, websockets through Channels.

Websockets are session-authenticated and origin-checked against ALLOWED_HOSTS.
"""

import os
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application
from psycopg_pool import ConnectionPool

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.main")
# Whether this module is what configures Django (daphne), not a process that imported it
# later (a test driving the ASGI app in-process keeps its own connections).
_SERVING = not settings.configured


def pool_connections(databases: dict[str, Any], max_size: int, timeout: float = 3) -> None:
    """This process serves requests, each on a thread of its own: its PostgreSQL connections
    come from a pool (settings.DB_POOL_MAX; 0 turns it off). Only the web server: a celery
    worker keeps one persistent connection per child instead, which a pool would forbid.

    A request waits at most `timeout` (settings.DB_POOL_TIMEOUT) for a connection, then
    answers 503 (config.errors). The pool retries a lost database with a doubling backoff for
    reconnect_timeout (5 min by default, so a database back after 20 s was used only ~30 s
    later); cut to `timeout`, the next request that finds the pool short starts a fresh
    attempt at once."""
    if not max_size:
        return
    for db in databases.values():
        if db["ENGINE"] == "django.db.backends.postgresql":
            db["CONN_MAX_AGE"] = 0  # Django's pool and persistent connections exclude each other
            db["OPTIONS"] = {
                **db.get("OPTIONS", {}),
                "pool": {
                    "min_size": min(2, max_size),
                    "max_size": max_size,
                    "timeout": timeout,
                    "reconnect_timeout": timeout,
                    # A pooled connection whose backend was terminated (a failover, an
                    # operator's pg_terminate_backend) is found dead and replaced at checkout,
                    # not handed to a request that would answer 503 with it; and the rest
                    # of the idle ones are replaced with it (check_or_drain).
                    "check": check_or_drain,
                },
            }


def check_or_drain(conn: Any) -> None:
    """The pool's check at checkout. A dead connection means its siblings idle in the pool
    died too (a failover, a restart, pg_terminate_backend of the database's backends): all
    of them are replaced at once (ConnectionPool.drain). Found one at a time instead, each
    checkout waited the pool's backoff (1 s, then 2 s) between dead ones, so a request
    discarded two or three of them and answered 503 after DB_POOL_TIMEOUT; with 11 idle
    connections killed, the next pages all answered 503 ("couldn't get a connection after
    3.00 sec") until chance had flushed them."""
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        pool = getattr(conn, "_pool", None)  # set by the pool while it hands conn out
        if isinstance(pool, ConnectionPool):
            pool.drain()
        raise


def limit_statements(databases: dict[str, Any], timeout_ms: int) -> None:
    """No statement of a request runs longer than `timeout_ms` (settings.DB_STATEMENT_TIMEOUT_MS;
    0: no limit), waiting for a lock included: PostgreSQL cancels it (QueryCanceled, an
    OperationalError) and the request answers 503 like any database failure (config.errors).
    Set at connect, in libpq's options, so every connection of this process carries it,
    pooled or not, before its first query."""
    if not timeout_ms:
        return
    for db in databases.values():
        if db["ENGINE"] == "django.db.backends.postgresql":
            options = dict(db.get("OPTIONS", {}))
            flag = f"-c statement_timeout={int(timeout_ms)}"
            options["options"] = f"{options['options']} {flag}" if options.get("options") else flag
            db["OPTIONS"] = options


if _SERVING:
    # Before Django is set up: no connection exists yet to have read the old settings.
    limit_statements(settings.DATABASES, settings.DB_STATEMENT_TIMEOUT_MS)
    pool_connections(settings.DATABASES, settings.DB_POOL_MAX, settings.DB_POOL_TIMEOUT)
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from review.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
