"""Cookies, CSRF, the content security policy (no inline script anywhere), body limits."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from .core import DEBUG
from .env import env_bool, env_int, env_list

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

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    # 'self' covers same-origin ws:/wss: for the live queue in CSP Level 3 browsers.
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.NONE],
}

# The agent API refuses a body over this with 413, in its JSON error shape, before anything
# parses it (api.views.limit_body). Django itself refuses bodies over
# DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default) with a bare 400, so the limit stays under it.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
if API_MAX_BODY_BYTES > 2_621_440:
    raise ImproperlyConfigured(f"API_MAX_BODY_BYTES={API_MAX_BODY_BYTES} must be at most 2621440.")
del DEBUG
