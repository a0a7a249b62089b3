"""Database, broker and channel layer.

No DATABASE_URL / REDIS_URL: embedded mode (SQLite in WAL mode, an in-process Celery worker
on kombu's in-memory transport, the in-memory channel layer). With them: PostgreSQL through
psycopg 3, Redis as the Celery broker and the channels-redis layer.
"""

from __future__ import annotations

import os
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .core import VAR_DIR
from .env import env_int, env_str, env_url

DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite"))
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss"))

# Embedded mode runs the worker, scheduler and channel layer inside the web process.
EMBEDDED = not REDIS_URL

if DATABASE_URL:
    try:
        _db: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
        _db["CONN_HEALTH_CHECKS"] = True
        # A database that is down must cost a request seconds, not minutes: libpq gives up
        # connecting after this, and the view answers 503 (config.errors).
        _db["OPTIONS"] = {
            **_db.get("OPTIONS", {}),
            "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 3, minimum=1),
            # Django turns psycopg's prepared statements off (None). Its own queries bind on
            # the client and are never prepared either way; only the engine's hot path
            # (workflows.hotsql, server-side binding, prepare=True) is, once per connection.
            "prepare_threshold": 5,
        }
else:
    VAR_DIR.mkdir(exist_ok=True)
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env_str("SQLITE_PATH", str(VAR_DIR / "caliber.sqlite3")),
    }
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # WAL lets the web thread read while the worker thread writes; IMMEDIATE takes the
        # write lock at BEGIN, so two deciders serialise instead of failing on upgrade.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _db.setdefault("TEST", {})["NAME"] = str(VAR_DIR / "test.sqlite3")
DATABASES = {"default": _db}
# The web server's PostgreSQL connection pool, applied by config.asgi to that process only:
# it serves each request on a thread of its own, and without a pool every request opened a
# new backend, the largest single cost of a Slack click or a queue page. Workers keep one
# connection per pool child instead (WORKER_CONN_MAX_AGE), which a pool would forbid. 0: off.
DB_POOL_MAX = env_int("DB_POOL_MAX", 16, minimum=0)
# A request waits at most this long for a pooled connection, then answers 503 (config.errors).
DB_POOL_TIMEOUT = env_int("DB_POOL_TIMEOUT", 3, minimum=1)
# The longest one SQL statement of a web request may run (lock waits included), applied by
# config.asgi to the web server's connections only: a stuck query or a lock held elsewhere
# costs a request this long, then it answers 503 (config.errors). Workers' tasks have their
# own time limit (CELERY_TASK_TIME_LIMIT). 0: no limit.
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 10_000, minimum=0)
# A celery pool child keeps its connection this long (config.celery): a new PostgreSQL
# backend per task cost as much as ~50 of the queries a task runs. 0: one per task.
WORKER_CONN_MAX_AGE = env_int("DB_WORKER_CONN_MAX_AGE", 300, minimum=0)
# Celery's Django fixup closes every connection around every task unless this is set; with it,
# connections live by WORKER_CONN_MAX_AGE and health checks (config.celery) instead.
CELERY_DB_REUSE_MAX = 1_000_000 if WORKER_CONN_MAX_AGE else None

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels_redis blocks up to 5 s waiting for a message; a read timeout at or
                # under that dropped every idle consumer's socket with a TimeoutError.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": env_str("CHANNELS_PREFIX", "caliber"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Shared by every process (the API's failed-token counters must be): Redis when there is one.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CHANNELS_PREFIX", "caliber"),
            # A Redis that is down must not hold a request up: the callers fail open.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }

# Celery (read by config/celery.py with namespace="CELERY").
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "caliber")
# What follows a person's decision (a run resuming, an undo window's end) goes here, and every
# worker consumes it first: `-Q <queue>-priority,<queue>` with the Redis transport's
# "priority" order (BRPOP on the keys in that order, never rotated), so one free child takes
# a decision before the next of a thousand queued steps.
CELERY_PRIORITY_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}-priority"
# Steps that call a model (seconds each) run here, never inline in a drain's batch: a pool of
# their own in scale-out mode (config/supervisord.conf); a lone worker consumes it last.
CELERY_MODEL_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}-model"
# The drain a decision wakes claims decided runs only (workflows.engine.drain_runs).
CELERY_TASK_ROUTES = {
    "workflows.tasks.resume_run": {"queue": CELERY_PRIORITY_QUEUE},
    "workflows.tasks.drain_resumes": {"queue": CELERY_PRIORITY_QUEUE},
    "workflows.tasks.run_model_step": {"queue": CELERY_MODEL_QUEUE},
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# Only the benchmarks set one (to time a round trip); the app never waits on task results.
CELERY_RESULT_BACKEND = env_url("CELERY_RESULT_BACKEND", schemes=("redis", "rediss")) or None
# A task is acknowledged only after it ran, and re-delivered if its worker died: every task
# is idempotent (it reloads by id and re-checks state under a lock), so at-least-once is safe.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker waits out a broker outage however long it lasts (Celery's default gives up after
# 100 attempts and exits); it retries at most every second (config.celery.Consumer).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = (
    # Redis re-delivers an unacked task after the visibility timeout: keep it well above the
    # task time limit or long tasks would run twice concurrently.
    {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 4, "queue_order_strategy": "priority"}
    if REDIS_URL
    # kombu's memory transport polls; its 1 s default makes the embedded demo sluggish.
    else {"polling_interval": 0.005}
)
# A task still running when the broker connection drops is left to finish: the engine's
# lease fence decides whether its commit counts, and cancelling it would only waste the work.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# The engine's beat tasks: re-enqueue stalled runs, wake sleeping ones, relay missed sends.
RECONCILE_EVERY_SECONDS = env_int("RECONCILE_EVERY_SECONDS", 10, minimum=1)
OUTBOX_RELAY_EVERY_SECONDS = env_int("OUTBOX_RELAY_EVERY_SECONDS", 5, minimum=1)
TAKEOVER_EVERY_SECONDS = env_int("TAKEOVER_EVERY_SECONDS", 2, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "reconcile-runs": {
        "task": "workflows.tasks.reconcile_runs",
        "schedule": float(RECONCILE_EVERY_SECONDS),
    },
    "wake-runs": {"task": "workflows.tasks.wake_runs", "schedule": float(RECONCILE_EVERY_SECONDS)},
    # Runs whose worker stopped renewing its leases (it died): taken over within seconds.
    "take-over-expired": {
        "task": "workflows.tasks.take_over_expired",
        "schedule": float(TAKEOVER_EVERY_SECONDS),
    },
    # Also what notices a broker that restarted empty (workflows.outbox.broker_restarted):
    # its period plus a worker's reconnect (<= 1 s, config.celery) bounds how long after the
    # broker's return the runs it lost are sent again.
    "relay-outbox": {
        "task": "workflows.tasks.relay_outbox",
        "schedule": float(OUTBOX_RELAY_EVERY_SECONDS),
    },
    # Slack deliveries whose task was lost or whose retry is due; prunes replay nonces.
    "slack-sweep": {"task": "slack.sweep", "schedule": 30.0},
    # The safety net of the summary writer's wake-ups (escalations.actions.summaries): one
    # lost with its broker, or a writer that died holding summaries (once their lease ends).
    "escalation-summaries": {
        "task": "escalations.tasks.write_summaries",
        "schedule": float(RECONCILE_EVERY_SECONDS),
    },
    # Escalations whose SLA passed: move down the chain or apply the declared expiry.
    "escalation-slas": {"task": "escalations.tasks.check_slas", "schedule": 10.0},
    # Degradation alerts: a rate outside its band opens one incident and tells the team.
    "metrics-alerts": {"task": "metrics.evaluate_alerts", "schedule": 60.0},
    # Fold the trigger-written action-count deltas into the daily rollup the dashboard reads.
    "metrics-rollups": {"task": "metrics.compact_rollups", "schedule": 60.0},
    # Webhook deliveries whose enqueue was lost (broker down at commit) go out again.
    "api-webhook-sweep": {"task": "api.tasks.requeue_stalled_webhooks", "schedule": 60.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# How long a run may sit pending/running without progress (and without a live lease) before
# the reconciler re-enqueues it.
RUN_STALL_SECONDS = env_int("RUN_STALL_SECONDS", 60, minimum=1)
# How long a lease (a run's coordinator, a step attempt) lasts past its holder's last
# renewal: a worker's heartbeat renews it every quarter of this, up to the step's timeout
# (workflows.heartbeat). A dead worker's run is taken over this long after it died, plus
# TAKEOVER_EVERY_SECONDS at most: 8 + 2 s, inside the 15 s promised.
RUN_LEASE_SECONDS = env_int("RUN_LEASE_SECONDS", 8, minimum=2)
# The most runs a drain (workflows.engine.drain_runs) claims at once: B. A drain starts at
# min(2, B) and doubles while batches come back full, so an idle engine claims one or two.
ENGINE_BATCH_MAX = env_int("ENGINE_BATCH_MAX", 32, minimum=1)
# The undo window of every irreversible action type, in seconds, overriding what each type
# declares (workflows.tools: 10 s by default); 0 runs approved actions at once. Unset: per type.
UNDO_WINDOW_SECONDS: int | None = (
    env_int("UNDO_WINDOW_SECONDS", 10, minimum=0) if os.environ.get("UNDO_WINDOW_SECONDS") else None
)
# Audit sampling: the share of actions allowed to run alone that a person is asked to judge,
# for a policy without its own rate; the second while its bar is new or changed (14 days).
AUDIT_RATE = float(os.environ.get("AUDIT_RATE") or 0.02)
AUDIT_RATE_NEW = float(os.environ.get("AUDIT_RATE_NEW") or 0.10)
# Outbox rows older than this were missed by the after-commit relay: beat sends them.
OUTBOX_GRACE_SECONDS = env_int("OUTBOX_GRACE_SECONDS", 10, minimum=1)
