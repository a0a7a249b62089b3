"""Start a run of a registered workflow from the command line (cron, scripts, operators)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from workflows.actions import start_run
from workflows.management.options import json_object_option
from workflows.specs import InvalidInput, InvalidPlan, UnknownWorkflow, all_specs


class Command(BaseCommand):
    help = (
        'Start a workflow run: manage.py start_run mention_research --input \'{"company": "Acme"}\''
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("workflow", help="A registered workflow name (see --list).")
        parser.add_argument("--input", default="{}", help="The run's input, a JSON object.")
        parser.add_argument(
            "--sync", action="store_true", help="Run every step inline (no parallel fan-out)."
        )
        parser.add_argument("--key", default=None, help="Idempotency key: a repeat is a no-op.")

    def handle(self, *args: Any, **options: Any) -> None:
        data = json_object_option("--input", options["input"])
        try:
            run = start_run(
                workflow=options["workflow"],
                input=data,
                force_sync=options["sync"],
                idempotency_key=options["key"],
            )
        except UnknownWorkflow as exc:
            known = ", ".join(sorted({s.name for s in all_specs()}))
            raise CommandError(f"{exc}; registered: {known}") from None
        except (InvalidInput, InvalidPlan) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{run.pk} {run.workflow} v{run.workflow_version}: {len(run.plan)} steps")
