"""Run Caliber: everything in one process (embedded), or web + worker + beat under
supervisord (scale-out), which starts each from this venv and restarts any that dies."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.settings.env import env_int
from workflows.embedded import EmbeddedServices
from workflows.management.commands.simulate import run_simulation


class Command(BaseCommand):
    help = "Serve the app on PORT with its worker, scheduler and (optionally) the demo stream."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument(
            "--rate",
            type=float,
            default=float(os.environ.get("SIMULATE_RATE", "0.2")),
            help="Demo tickets per second; 0 disables the stream.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port = env_int("PORT", 8000, minimum=1)
        if options["rate"] < 0:
            raise CommandError("--rate must be 0 (off) or positive")
        if not settings.EMBEDDED:
            self._exec_supervisord(port, options)
        self._serve_embedded(options["host"], port, options["rate"])

    def _exec_supervisord(self, port: int, options: dict[str, Any]) -> None:
        run_dir = Path(os.environ.get("CALIBER_RUN_DIR") or settings.BASE_DIR / "var")
        run_dir.mkdir(parents=True, exist_ok=True)
        rate = options["rate"]
        env = dict(
            os.environ,
            PORT=str(port),
            HOST=options["host"],
            SIMULATE_RATE=str(rate),
            CALIBER_SIMULATE="true" if rate else "false",
            # The venv's interpreter runs every program: under make, its bin/ is not on PATH.
            CALIBER_PYTHON=sys.executable,
            CALIBER_RUN_DIR=str(run_dir.resolve()),
            WORKER_PROCESSES=os.environ.get("WORKER_PROCESSES", "2"),
            WORKER_CONCURRENCY=os.environ.get("WORKER_CONCURRENCY", "1"),
            # The priority queue first: workers serve it before the rest, and the resumer
            # serves nothing else.
            CALIBER_PRIORITY_QUEUE=settings.CELERY_PRIORITY_QUEUE,
            CALIBER_WORKER_QUEUES=",".join(
                q
                for q in (
                    settings.CELERY_PRIORITY_QUEUE,
                    settings.CELERY_TASK_DEFAULT_QUEUE,
                )
                if q
            ),
            # Steps that call a model run in a pool of their own (the modeler), never on the
            # workers above: a model's seconds never hold a drain's batch.
            CALIBER_MODEL_QUEUE=settings.CELERY_MODEL_QUEUE,
            MODEL_CONCURRENCY=os.environ.get("MODEL_CONCURRENCY", "2"),
        )
        self.stdout.write(
            f"Scale-out mode: web, worker, beat{' and simulate' if rate else ''} under "
            f"supervisord on http://{options['host']}:{port}/  — Ctrl-C stops them all"
        )
        self.stdout.flush()
        conf = settings.BASE_DIR / "config" / "supervisord.conf"
        args = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
        # Replaces this process: Ctrl-C (or SIGTERM to this pid) stops every program.
        os.execve(sys.executable, args, env)  # noqa: S606

    def _serve_embedded(self, host: str, port: int, rate: float) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        # Imported here: loading the ASGI app builds it (and its routing), which only the
        # embedded server needs.
        from config.asgi import application

        services = EmbeddedServices()
        services.start()
        stop = threading.Event()
        sim = None
        if rate > 0:
            sim = threading.Thread(
                target=run_simulation,
                kwargs={"rate": rate, "count": 0, "seed": None, "stop": stop},
                name="simulate",
                daemon=True,
            )
            sim.start()
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(f"Caliber (embedded mode) on {url}  — Ctrl-C stops it")
        )
        if rate:
            self.stdout.write(f"Demo tickets arrive at {rate}/s.")
        try:
            Server(
                application=application,
                endpoints=build_endpoint_description_strings(host=host, port=port),
                signal_handlers=True,
            ).run()
        finally:
            stop.set()
            services.stop()
            if sim is not None:
                sim.join(timeout=5)
            self.stdout.write("Stopped.")
