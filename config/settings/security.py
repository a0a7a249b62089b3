"""Cookies, CSRF, HTTPS, the content security policy (no inline script anywhere), body limits.

Behind a TLS-terminating proxy set `HTTPS=1` and `PROXY_SSL_HEADER` (the header the proxy sets,
e.g. `X-Forwarded-Proto`): secure cookies, a redirect to https and HSTS follow, and
`manage.py check --deploy --fail-level WARNING` passes (tests/config/test_deploy_check.py).
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from .core import DEBUG
from .env import env_bool, env_int, env_list, env_str

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

_https = env_bool("HTTPS", default=False)
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Plain-http requests are redirected to https; the health probe is exempt, since load
# balancers and orchestrators call it over plain http from inside the network.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=_https)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# A year, the figure browsers' preload lists ask for; start lower (e.g. 300) while trying it.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if _https else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_https)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=_https)

# The proxy terminates TLS, so Django sees http; the header the proxy sets tells it the
# original scheme. Only set it when a proxy that overwrites the header is in front: a client
# could otherwise forge it.
_proxy_header = env_str("PROXY_SSL_HEADER")
if _proxy_header:
    if not all(c.isalnum() or c == "-" for c in _proxy_header):
        raise ImproperlyConfigured(f"PROXY_SSL_HEADER={_proxy_header!r} is not a header name.")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    # 'self' covers same-origin ws:/wss: for the live queue in CSP Level 3 browsers.
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.NONE],
}

# Bad API tokens one client address may present per minute before it gets 429 (api.auth).
API_AUTH_FAILURES_PER_MINUTE = env_int("API_AUTH_FAILURES_PER_MINUTE", 20, minimum=1)
# The live queue's websocket carries small commands (claim, ping); a larger frame is refused
# and the socket closed (review.consumers).
WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 4096, minimum=256)

# The agent API refuses a body over this with 413, in its JSON error shape, before anything
# parses it (api.views.limit_body). Django itself refuses bodies over
# DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default) with a bare 400, so the limit stays under it.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
if API_MAX_BODY_BYTES > 2_621_440:
    raise ImproperlyConfigured(f"API_MAX_BODY_BYTES={API_MAX_BODY_BYTES} must be at most 2621440.")
del DEBUG
