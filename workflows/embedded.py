"""Embedded mode: the Celery worker and beat run as threads inside the server process.

Seen here: a thread-pool worker on kombu's memory transport with a 5 ms polling interval
keeps up with the demo easily; celery.contrib.testing's start_worker hung, so the worker is
built directly. WorkController (not app.Worker) installs no signal handlers, which only the
main thread may do; daphne owns Ctrl-C there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.beat import EmbeddedService
from django.conf import settings

from config.celery import app

log = logging.getLogger(__name__)


class EmbeddedServices:
    def __init__(self, *, concurrency: int = 4) -> None:
        if not settings.EMBEDDED:
            raise RuntimeError("embedded services only run without REDIS_URL")
        self.concurrency = concurrency
        self.worker: Any = None
        self.beat: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.worker = app.WorkController(
            pool_cls="threads",
            concurrency=self.concurrency,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            # The priority queue first (what follows a person's decision). kombu's memory
            # transport cycles fairly between them rather than strictly in order: in embedded
            # mode the decision's task is only never starved, not served first. The model
            # queue too (steps that call a model): this one worker is their pool as well.
            queues=[
                settings.CELERY_PRIORITY_QUEUE,
                settings.CELERY_TASK_DEFAULT_QUEUE,
                settings.CELERY_MODEL_QUEUE,
            ],
        )
        t = threading.Thread(target=self.worker.start, name="celery-worker", daemon=True)
        t.start()
        self._threads.append(t)
        self.beat = EmbeddedService(
            app, thread=True, schedule_filename=settings.CELERY_BEAT_SCHEDULE_FILENAME
        )
        self.beat.start()

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        if self.worker is not None:
            self.worker.stop(in_sighandler=False, exitcode=0)
        for t in self._threads:
            t.join(timeout=5)
