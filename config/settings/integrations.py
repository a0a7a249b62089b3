"""External systems: the model, Slack, and the public base URL used in links."""

from __future__ import annotations

from .env import env_bool, env_int, env_str, env_url

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", schemes=("http", "https"))
OPENAI_MODEL = env_str("OPENAI_MODEL", "gpt-4o-mini")
# One HTTP call may take this long; all attempts of one model call (429s honouring
# Retry-After, 5xx, timeouts) must fit in the budget, or the step fails with the reason.
OPENAI_TIMEOUT = float(env_int("OPENAI_TIMEOUT", 30, minimum=1))
OPENAI_MAX_ATTEMPTS = env_int("OPENAI_MAX_ATTEMPTS", 4, minimum=1)
OPENAI_BUDGET_SECONDS = float(env_int("OPENAI_BUDGET_SECONDS", 90, minimum=1))
OPENAI_LOGPROBS = env_bool("OPENAI_LOGPROBS", default=True)
# Steps that call a model (StepSpec.calls_model) run alone, on the model queue, never inline
# in a drain's batch: on wherever a model server is configured (its calls take seconds). The
# built-in offline model answers in microseconds: its steps stay inline, where a model step
# sent alone cost a triage run 14 commits, 4.5 Celery messages and ~50 ms of CPU more.
MODEL_STEPS_ALONE = env_bool("MODEL_STEPS_ALONE", default=bool(OPENAI_API_KEY or OPENAI_BASE_URL))
# How many escalation summaries one writer asks the model for at once (threads, each waiting
# on its HTTP call): a batch of seconds-long calls must not queue behind each other.
SUMMARY_CONCURRENCY = env_int("SUMMARY_CONCURRENCY", 8, minimum=1)
# USD per million tokens (input, output); a model not listed is recorded with no cost.
MODEL_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "offline-rules-v1": (0.0, 0.0),
}

SLACK_BOT_TOKEN = env_str("SLACK_BOT_TOKEN")
SLACK_SIGNING_SECRET = env_str("SLACK_SIGNING_SECRET")
SLACK_API_URL = env_url("SLACK_API_URL", schemes=("http", "https"))
# Blank: Slack deliveries share the default queue. Set it to give them their own workers, so
# a queue full of agent steps never delays a message update.
SLACK_CELERY_QUEUE = env_str("SLACK_CELERY_QUEUE")

# Bearer token for /metrics/prometheus (staff sessions may also read it). Unset: staff only.
METRICS_TOKEN = env_str("METRICS_TOKEN")

CALIBER_BASE_URL = env_url("CALIBER_BASE_URL", schemes=("http", "https")).rstrip("/")
