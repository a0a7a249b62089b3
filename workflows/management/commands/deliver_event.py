"""Deliver an outside event to a run, as an integration would through the API (the demo's way
to play the customer): manage.py deliver_event RUN_ID customer_replied --text "Still broken"."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from workflows.management.options import json_object_option
from workflows.models import RunStatus, WorkflowRun
from workflows.run_events import CUSTOMER_REPLIED, deliver_event


class Command(BaseCommand):
    help = (
        "Deliver an event to a run: deliver_event RUN_ID customer_replied --text '...'; "
        "--latest picks the newest support triage run that sent a reply."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_id", nargs="?", help="The run (omit with --latest).")
        parser.add_argument("kind", nargs="?", default=CUSTOMER_REPLIED, help="The event kind.")
        parser.add_argument("--text", default="", help="The customer's words (customer_replied).")
        parser.add_argument("--data", default="{}", help="More of the event, a JSON object.")
        parser.add_argument("--key", default="", help="Idempotency key: a repeat is a no-op.")
        parser.add_argument(
            "--latest",
            action="store_true",
            help="The newest finished support triage run with a waiting follow-up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data = json_object_option("--data", options["data"])
        if options["text"]:
            data["text"] = options["text"]
        run_id = options["run_id"]
        if options["latest"]:
            run_id = (
                WorkflowRun.objects.filter(
                    workflow="support_triage", children__status=RunStatus.WAITING
                )
                .order_by("-created_at")
                .values_list("pk", flat=True)
                .first()
            )
        if not run_id:
            raise CommandError("name a run, or use --latest")
        try:
            delivered = deliver_event(
                run_id=run_id, kind=options["kind"], data=data, actor="cli", key=options["key"]
            )
        except WorkflowRun.DoesNotExist:
            raise CommandError(f"no run {run_id}") from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        what = "already delivered; nothing changed" if delivered.duplicate else "delivered"
        self.stdout.write(
            f"{delivered.kind} {what} to run {delivered.run.pk}: {delivered.woke} step(s) woken"
        )
