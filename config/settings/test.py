"""Test settings: the real local PostgreSQL and Redis, unless DATABASE_URL / REDIS_URL say
otherwise."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/caliber")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("SECRET_KEY", "test-only-not-secret")
os.environ.setdefault("CELERY_QUEUE", f"caliber-test-{os.getpid()}")
os.environ.setdefault("CHANNELS_PREFIX", f"caliber-test-{os.getpid()}")
# Short engine timings, so crash recovery (lease expiry, reconciler) fits in a test.
os.environ.setdefault("RUN_LEASE_SECONDS", "4")
os.environ.setdefault("RUN_STALL_SECONDS", "2")
os.environ.setdefault("OUTBOX_GRACE_SECONDS", "1")
# Every test client is 127.0.0.1: the suite presents far more bad tokens a minute than any
# one client should (tests/api/test_throttle.py lowers it again).
os.environ.setdefault("API_AUTH_FAILURES_PER_MINUTE", "1000000")
# Approved irreversible actions run at once unless a test sets a window (settings fixture: it
# is read where the decision is made).
os.environ.setdefault("UNDO_WINDOW_SECONDS", "0")

# No audit draws unless a test asks for them (a policy's own audit_rate, or the settings
# fixture): a random audit would otherwise add an escalation to any test now and then.
os.environ.setdefault("AUDIT_RATE", "0")
os.environ.setdefault("AUDIT_RATE_NEW", "0")

from .main import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Workflows that exist only for tests, registered in every process (worker, daphne) too.
WORKFLOW_MODULES = [*WORKFLOW_MODULES, "tests.workflows.specs_for_tests"]  # noqa: F405
