"""External systems: the model, Slack, and the public base URL used in links."""

from __future__ import annotations

from .env import env_str, env_url

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", schemes=("http", "https"))
OPENAI_MODEL = env_str("OPENAI_MODEL", "gpt-4o-mini")

SLACK_BOT_TOKEN = env_str("SLACK_BOT_TOKEN")
SLACK_SIGNING_SECRET = env_str("SLACK_SIGNING_SECRET")
SLACK_API_URL = env_url("SLACK_API_URL", schemes=("http", "https"))

CALIBER_BASE_URL = env_url("CALIBER_BASE_URL", schemes=("http", "https")).rstrip("/")
