"""Demo teams, users, agents and policies.

Passwords are generated fresh on every run and printed, never stored in code.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from escalations.models import AgentProfile, AutonomyPolicy, Team, TrustLevel
from workflows.models import PolicyOutcome

DEMO_USERS = (
    # username, team slug (None: admin), superuser
    ("admin", None, True),
    ("alice", "support", False),
    ("bob", "billing", False),
)


class Command(BaseCommand):
    help = "Create (or refresh) the demo teams, users, agent and autonomy policies."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet-logins", action="store_true", help="Do not print logins.")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        support, _ = Team.objects.get_or_create(
            slug="support", defaults={"name": "Support", "slack_channel": "#support-review"}
        )
        billing, _ = Team.objects.get_or_create(
            slug="billing", defaults={"name": "Billing", "slack_channel": "#billing-review"}
        )
        teams = {"support": support, "billing": billing}
        agent, _ = AgentProfile.objects.get_or_create(
            name="triage-agent",
            defaults={
                "description": "Reads support tickets, classifies them, drafts replies.",
                "team": support,
                "trust_level": TrustLevel.STANDARD,
                "customer_facing": True,
            },
        )
        if not AutonomyPolicy.objects.exists():
            AutonomyPolicy.objects.bulk_create(
                [
                    AutonomyPolicy(
                        name="CRM updates act alone when confident",
                        action_type="update_crm",
                        outcome=PolicyOutcome.AUTO,
                        min_confidence=0.7,
                        team=support,
                    ),
                    AutonomyPolicy(
                        name="Customer replies are reviewed",
                        action_type="send_reply",
                        outcome=PolicyOutcome.AUTO,
                        min_confidence=0.85,
                        irreversible_requires_review=True,
                        team=support,
                    ),
                    AutonomyPolicy(
                        name="Routing acts alone when confident",
                        action_type="route_to_team",
                        outcome=PolicyOutcome.AUTO,
                        min_confidence=0.8,
                        team=billing,
                    ),
                ]
            )
        User = get_user_model()
        logins = []
        for username, team_slug, is_admin in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            password = secrets.token_urlsafe(9)
            user.set_password(password)
            user.is_staff = is_admin
            user.is_superuser = is_admin
            user.save()
            if team_slug:
                teams[team_slug].members.add(user)
            role = "admin, sees every team" if is_admin else f"reviewer, team {team_slug}"
            logins.append((username, password, role))
        if not options["quiet_logins"]:
            self.stdout.write(self.style.SUCCESS(f"Demo data ready (agent: {agent.name})."))
            self.stdout.write("Demo logins (passwords are new on every start):")
            for username, password, role in logins:
                self.stdout.write(f"  {username:<8} {password:<14} {role}")
