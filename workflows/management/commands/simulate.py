"""A stream of demo support tickets, each starting a triage run, so the queue fills live."""

from __future__ import annotations

import random
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from workflows.actions import start_run
from workflows.demo_tickets import make_ticket
from workflows.models import WorkflowRun


class Command(BaseCommand):
    help = "Start triage runs for generated tickets at a steady rate."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rate", type=float, default=0.2, help="Tickets per second.")
        parser.add_argument("--count", type=int, default=0, help="How many; 0 = until stopped.")
        parser.add_argument("--seed", type=int, default=None, help="Random seed.")

    def handle(self, *args: Any, **options: Any) -> None:
        rate, count = options["rate"], options["count"]
        if rate <= 0 or rate > 1000:
            raise CommandError("--rate must be in (0, 1000] tickets per second")
        if count < 0:
            raise CommandError("--count must be 0 (forever) or more")
        run_simulation(rate=rate, count=count, seed=options["seed"], stop=None, out=self.stdout)


def run_simulation(*, rate: float, count: int, seed: int | None, stop: Any, out: Any = None) -> int:
    rng = random.Random(seed)
    number = WorkflowRun.objects.count() + 1
    started = 0
    while count == 0 or started < count:
        if stop is not None and stop.is_set():
            break
        run = start_run(workflow="support_triage", input=make_ticket(rng, number))
        if out is not None:
            out.write(f"started run {run.pk} for {run.input['ticket_id']}")
        number += 1
        started += 1
        if stop is not None:
            if stop.wait(1.0 / rate):
                break
        else:
            time.sleep(1.0 / rate)
    return started
