"""The Celery app. Tasks are thin: they load by id and call an action (HackSoft style)."""

import functools
import logging
import os
from typing import Any

from celery import Celery
from celery.signals import task_prerun, worker_process_init
from celery.worker.consumer import Consumer as WorkerConsumer

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.main")

log = logging.getLogger(__name__)

# A worker that lost its broker retries every BROKER_RETRY_MAX_SECONDS at most. kombu's default
# backoff (2 s more per attempt, up to 30 s) left a worker idle up to 30 s after Redis came
# back; a refused connection to a local broker costs next to nothing to retry.
BROKER_RETRY_MAX_SECONDS = 1.0


class Consumer(WorkerConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=0.2,
            interval_step=0.2,
            interval_max=BROKER_RETRY_MAX_SECONDS,
        )
        connected = super().ensure_connected(conn)
        self._relay_now()
        return connected

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Celery closes the lost connection before reconnecting; kombu's Redis channel then
        restores its unacked messages through a client it can no longer build (the
        connection's details are already released: AttributeError, kombu#970), and that
        error, not being a connection error, killed the worker's main process, its children
        and their running steps with it: seconds of a restarted worker's boot, and leases to
        run out, added to a Redis restart. The restore cannot succeed with the broker gone
        anyway (what it would restore comes back by the visibility timeout, or the broker
        lost it and the outbox re-sends it), so that error is logged and the reconnect
        goes on."""
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_lost() -> None:
                try:
                    close()
                except AttributeError as error:
                    log.warning("closing the lost broker connection: %r (kombu#970)", error)

            connection.close = close_lost  # type: ignore[method-assign]
        super().on_connection_error_after_connected(exc)

    def _relay_now(self) -> None:
        """Connected (at start, or back after losing the broker): have the outbox relayed
        now, first in line, rather than at beat's next relay (OUTBOX_RELAY_EVERY_SECONDS).
        A broker that came back empty is noticed by that relay (workflows.tasks.relay_outbox)
        and what it lost is sent again within about a second of a worker reconnecting; with
        several workers, one claims the restart and the others' relays find nothing to do.
        Beat's own relay still covers a send that fails here."""
        from django.conf import settings

        try:
            self.app.send_task(
                str(settings.CELERY_BEAT_SCHEDULE["relay-outbox"]["task"]),
                queue=settings.CELERY_PRIORITY_QUEUE,
            )
        except Exception as exc:  # the broker went again: beat's relay will do
            log.warning("could not ask for an outbox relay on connecting: %s", exc)


app = Celery("caliber")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_consumer = "config.celery:Consumer"
app.autodiscover_tasks()


@worker_process_init.connect
def _keep_database_connections(**kwargs: object) -> None:
    """A prefork child runs one task at a time on one thread, so it can keep its PostgreSQL
    connection between tasks (settings.WORKER_CONN_MAX_AGE) instead of opening one per task;
    `_check_database_connections` drops it after an error or once it is too old, and
    CONN_HEALTH_CHECKS pings it before the next task uses it (a killed backend is replaced).
    Workers never pool connections: only the web server does (config.asgi)."""
    from django.conf import settings
    from django.db import connections

    for alias in connections:
        db = connections[alias]
        if db.vendor == "postgresql" and db.settings_dict.get("CONN_MAX_AGE") == 0:
            db.settings_dict["CONN_MAX_AGE"] = settings.WORKER_CONN_MAX_AGE


@task_prerun.connect
def _check_database_connections(**kwargs: object) -> None:
    """What Django does at the start of every request: drop a connection that errored, is in
    the wrong transaction mode or too old, and have the next query health-check it first."""
    from django.db import connections

    for db in connections.all(initialized_only=True):
        db.close_if_unusable_or_obsolete()


@app.task(name="caliber.ping", ignore_result=False)
def ping() -> str:
    """A no-op round trip: the broker and a worker are alive (and the bench's yardstick)."""
    return "pong"
