"""manage.py revoke_api_token PREFIX — revoke a token at once (as the admin's action does)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.actions import revoke_api_token
from api.models import ApiToken


class Command(BaseCommand):
    help = "Revoke the API token whose prefix (shown in the admin, e.g. cal_AbC123xy) is given."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        tokens = list(ApiToken.objects.filter(prefix=options["prefix"]))
        if len(tokens) != 1:
            raise CommandError(
                f"{len(tokens)} tokens have the prefix {options['prefix']!r}; expected one."
            )
        if revoke_api_token(token=tokens[0]):
            self.stdout.write(f"Revoked {tokens[0]}.")
        else:
            self.stdout.write(f"{tokens[0]} was already revoked.")
