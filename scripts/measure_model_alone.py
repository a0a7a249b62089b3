"""A batch-mate's commit latency while another run's model call blocks (issue 20: steps that
call a model run alone). Not a test: a measurement, run from a checkout's root with its env
(DATABASE_URL's server, REDIS_URL, BENCH_DB):

    .venv/bin/python scripts/measure_model_alone.py [--rounds 6] [--hold 4]

One real `celery worker` (2 prefork children, the tests' lone worker) on the bench database,
its model a local OpenAI-compatible fake (so MODEL_STEPS_ALONE is on where the code has it).
Each round starts two triage runs in one transaction, so one drain claims both in one batch:
"slow", whose classify call the fake model holds until `--hold` seconds have passed (an
event, not a sleep in the engine), and "mate", whose calls are answered at once. It reports,
per round, from database timestamps: the mate's first commit (read_ticket) and its reaching a
person's review (run waiting), each after its start, and whether that happened while slow's
model call was still held.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hold", type=float, default=4.0)
    args = parser.parse_args()

    from bench.harness import configure_environment, recreate_database

    configure_environment()
    recreate_database()
    from tests.fakes.openai_server import CANNED, FakeOpenAI, schema_name

    fake = FakeOpenAI()
    held = threading.Event()  # slow's classify is in the model
    release = threading.Event()

    def responder(req: dict[str, Any]) -> Any:
        name = schema_name(req)
        text = str(req.get("messages", ""))
        if name == "Classification" and "SLOW-" in text and not release.is_set():
            held.set()
            release.wait(120)
        return CANNED[name]

    fake.responder = responder
    os.environ.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="fake")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from tests.support import processes
    from workflows.actions import start_run
    from workflows.models import RunStatus, StepRun, WorkflowRun

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as devnull:
        call_command("seed_demo", quiet_logins=True, no_history=True, stdout=devnull)
    import workflows

    print(f"code: {Path(workflows.__file__).parent.parent}; load {os.getloadavg()}", flush=True)
    log_dir = ROOT / "var" / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    first: list[float] = []
    waiting: list[float] = []
    during: list[bool] = []
    with fake:
        worker = processes.start_worker(
            env=dict(os.environ, CELERY_LOG_LEVEL="INFO"),
            log_path=log_dir / "model-alone-worker.log",
            concurrency=2,
            timeout=60,
        )
        try:
            for i in range(args.rounds):
                held.clear()
                release.clear()
                ticket = {
                    "subject": "Charged twice",
                    "body": "I was charged twice this month.",
                    "customer": "ada@example.com",
                }
                tag = uuid.uuid4().hex[:6]
                with transaction.atomic():
                    slow = start_run(
                        workflow="support_triage",
                        input={**ticket, "ticket_id": f"SLOW-{tag}", "subject": f"SLOW-{tag}"},
                    )
                    mate = start_run(
                        workflow="support_triage", input={**ticket, "ticket_id": f"MATE-{tag}"}
                    )
                if not held.wait(60):
                    raise RuntimeError("slow's classify never reached the model")
                held_at = time.time()
                # Hold the slow model call until --hold has passed or the mate waits for a
                # person, whichever is first; then let it go.
                deadline = held_at + args.hold
                while time.time() < deadline:
                    if WorkflowRun.objects.filter(pk=mate.pk, status=RunStatus.WAITING).exists():
                        break
                    time.sleep(0.02)
                released_at = time.time()
                release.set()
                for run in (mate, slow):
                    end = time.time() + 120
                    while not WorkflowRun.objects.filter(
                        pk=run.pk, status__in=[RunStatus.WAITING, RunStatus.SUCCEEDED]
                    ).exists():
                        if time.time() > end:
                            raise RuntimeError(f"run {run.pk} did not reach a person")
                        time.sleep(0.05)
                mate.refresh_from_db()
                read = StepRun.objects.get(run=mate, name="read_ticket")
                assert read.finished_at is not None
                first_s = (read.finished_at - mate.created_at).total_seconds()
                reached = (
                    mate.trace.filter(message__startswith="waiting").order_by("created_at").first()
                )
                wait_s = (reached.created_at - mate.created_at).total_seconds() if reached else -1
                inside = reached is not None and reached.created_at.timestamp() < released_at
                first.append(first_s)
                waiting.append(wait_s)
                during.append(inside)
                print(
                    f"round {i}: mate first commit {first_s * 1000:.0f} ms, waits for a person "
                    f"after {wait_s * 1000:.0f} ms ({'while' if inside else 'after'} slow's "
                    f"model call was held; held {released_at - held_at:.1f} s)",
                    flush=True,
                )
        finally:
            processes.stop(worker)
    print(
        f"mate first commit: median {statistics.median(first) * 1000:.0f} ms, max "
        f"{max(first) * 1000:.0f} ms; to a person: median {statistics.median(waiting) * 1000:.0f}"
        f" ms, max {max(waiting) * 1000:.0f} ms; {sum(during)}/{len(during)} reached a person "
        f"while slow's model call was held; load {os.getloadavg()}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
