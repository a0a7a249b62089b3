"""Production settings, from the environment alone, pass Django's deployment checklist."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "config.settings.main",
    "SECRET_KEY": "a-production-like-key-" + "x9Q2" * 12,
    "DEBUG": "0",
    "ALLOWED_HOSTS": "caliber.example.com",
    "DATABASE_URL": "postgres://caliber@db.internal:5432/caliber",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "HTTPS": "1",
    "PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "CSRF_TRUSTED_ORIGINS": "https://caliber.example.com",
}


def _check(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "DB_POOL_MAX"}
    env.update(PRODUCTION, **overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy_at_warning_level():
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr


def test_without_https_the_check_names_what_is_missing():
    done = _check(HTTPS="0")
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr + done.stdout
