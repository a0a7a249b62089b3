"""A stream of demo support tickets, each starting a triage run, so the queue fills live."""

from __future__ import annotations

import random
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from workflows.actions import start_run
from workflows.demo_tickets import make_ticket
from workflows.models import RunStatus, WorkflowRun
from workflows.run_events import CUSTOMER_REPLIED, deliver_event

# Now and then a customer writes back to a ticket whose follow-up is waiting: delivered as an
# outside event, as a mail gateway would through the API, so the demo shows it land.
WRITE_BACK_CHANCE = 0.15
WRITE_BACKS = (
    "Thanks, but it is still not working.",
    "That did not help; I was charged again today.",
    "Here is my order number: 100-4521.",
)


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


def _customer_writes_back(rng: random.Random, out: Any) -> None:
    waiting = list(
        WorkflowRun.objects.filter(workflow="support_triage", children__status=RunStatus.WAITING)
        .order_by("-created_at")
        .values_list("pk", flat=True)[:20]
    )
    if not waiting:
        return
    run_id = rng.choice(waiting)
    delivered = deliver_event(
        run_id=run_id,
        kind=CUSTOMER_REPLIED,
        data={"text": rng.choice(WRITE_BACKS)},
        actor="simulate",
    )
    if out is not None:
        out.write(f"the customer of run {run_id} wrote back ({delivered.woke} step(s) woken)")


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
        if rng.random() < WRITE_BACK_CHANCE:
            _customer_writes_back(rng, out)
        if stop is not None:
            if stop.wait(1.0 / rate):
                break
        else:
            time.sleep(1.0 / rate)
    return started
