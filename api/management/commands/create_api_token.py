"""manage.py create_api_token --agent NAME [--reviewer --user USERNAME] [--name LABEL]"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.actions import NotAReviewer, create_api_token
from escalations.models import AgentProfile


class Command(BaseCommand):
    help = "Create an API token for an agent and print it once (only its hash is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", required=True, help="The agent profile's name.")
        parser.add_argument("--name", default="", help="A label, e.g. 'prod' or 'ci'.")
        parser.add_argument(
            "--reviewer",
            action="store_true",
            help="May also list and decide escalations as --user, in that person's teams "
            "(never those of the agent's own actions).",
        )
        parser.add_argument(
            "--user",
            default="",
            help="The person a reviewer token decides as (required with --reviewer).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            agent = AgentProfile.objects.select_related("team").get(name=options["agent"])
        except AgentProfile.DoesNotExist:
            names = ", ".join(AgentProfile.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"No agent named {options['agent']!r} (agents: {names}).") from None
        user = None
        if options["reviewer"] and not options["user"]:
            raise CommandError("--reviewer needs --user NAME: the person the token decides as.")
        if options["user"]:
            if not options["reviewer"]:
                raise CommandError("--user only means something with --reviewer.")
            try:
                user = User.objects.get(username=options["user"])
            except User.DoesNotExist:
                raise CommandError(f"No user named {options['user']!r}.") from None
        try:
            token, raw = create_api_token(
                agent=agent, name=options["name"], reviewer=options["reviewer"], user=user
            )
        except NotAReviewer as exc:
            raise CommandError(str(exc)) from None
        rights = f", reviewer as {token.user}" if token.reviewer else ""
        self.stderr.write(
            f"Token {token.prefix}… for agent {agent.name}{rights}. "
            "Shown once; Caliber keeps only its hash:"
        )
        self.stdout.write(raw)
