"""`manage.py rollups`: fold pending deltas into the daily action rollup, or recount it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from review.metrics import rollups


class Command(BaseCommand):
    help = (
        "Fold the action-count deltas into the daily rollup (what beat does every minute); "
        "with --rebuild, recount the rollup from every action (after a restore)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rebuild", action="store_true", help="recount from the actions")

    def handle(self, *args: Any, rebuild: bool = False, **options: Any) -> None:
        if rebuild:
            rows = rollups.rebuild()
            self.stdout.write(f"rebuilt the daily action rollup: {rows} rows")
        else:
            rows = rollups.compact()
            self.stdout.write(f"compacted: {rows} rollup rows written")
