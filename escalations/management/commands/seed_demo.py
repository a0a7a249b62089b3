"""Demo teams, users, agents and policies, and 30 days of history (escalations/demo_history.py)
so the metrics, calibration and the recommender have something to show on first start.

Passwords are generated fresh on every run and printed, never stored in code. Running it
again adds no second history.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from escalations.actions import save_policy
from escalations.demo_history import DAYS, seed_history
from escalations.models import AgentProfile, AutonomyPolicy, ExpiryBehaviour, Team, TrustLevel
from workflows.models import PolicyOutcome

DEMO_USERS = (
    # username, team slug (None: admin), superuser
    ("admin", None, True),
    ("alice", "support", False),
    ("bob", "billing", False),
)


def _demo_policies(support: Team, billing: Team) -> list[dict[str, Any]]:
    """What the demo shows off. Nothing here may stop the triage stream from acting alone once
    the bench loosens outcome, confidence and irreversibility (bench_e2e): the extra
    conditions sit on refunds (which triage never proposes), on a disabled policy, or far
    above the demo's rate."""
    return [
        {
            "name": "CRM updates act alone when confident",
            "action_type": "update_crm",
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.7,
            "min_confidence_probation": 0.9,
            "min_confidence_trusted": 0.6,
            "rate_limit_count": 5000,
            "rate_limit_window_minutes": 60,
            "team": support,
        },
        {
            "name": "Customer replies are reviewed",
            "action_type": "send_reply",
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.85,
            "irreversible_requires_review": True,
            "irreversible_trusted_min_confidence": 0.97,
            "block_patterns": "password\\s*[:=]\n\\bapi[_ ]?key\\s*[:=]",
            "team": support,
            "sla_minutes": 30,
            "escalation_chain": "billing",
            "expiry_behaviour": ExpiryBehaviour.REJECT,
        },
        {
            "name": "Routing acts alone when confident",
            "action_type": "route_to_team",
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.8,
            "team": billing,
        },
        {
            "name": "Refunds: small ones alone, large ones by two people",
            "action_type": "issue_refund",
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.9,
            "max_amount": 50,
            "irreversible_requires_review": False,
            "approvals_required": 2,
            "approvals_required_above": 200,
            "team": billing,
            "sla_minutes": 60,
            "escalation_chain": "support",
            "expiry_behaviour": ExpiryBehaviour.REJECT,
        },
        {
            "name": "Replies promising money need review (enable it: try the what-if first)",
            "enabled": False,
            "action_type": "send_reply",
            "outcome": PolicyOutcome.AUTO,
            "min_confidence": 0.0,
            "irreversible_requires_review": False,
            "review_patterns": "\\brefund\n\\bcompensat\n\\bcredit\\b",
            "priority": 200,
            "team": billing,
        },
    ]


class Command(BaseCommand):
    help = "Create (or refresh) the demo teams, users, agent and autonomy policies."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet-logins", action="store_true", help="Do not print logins.")
        parser.add_argument(
            "--no-history",
            action="store_true",
            help="Skip the 30 days of demo history (benchmarks and tests start empty).",
        )

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
                "agent_type": "support triage",
                "trust_level": TrustLevel.STANDARD,
                "customer_facing": True,
            },
        )
        # The mention-research workflow acts as its own agent; its public responses are
        # irreversible, so they are reviewed by Support under the default rules.
        AgentProfile.objects.get_or_create(
            name="research-agent",
            defaults={
                "description": "Finds mentions of the company, weighs sentiment, drafts responses.",
                "team": support,
                "agent_type": "mention research",
                "trust_level": TrustLevel.STANDARD,
                "customer_facing": True,
            },
        )
        for fields in _demo_policies(support, billing):
            # By name, so an older install gets the newer demo policies without losing edits.
            if not AutonomyPolicy.objects.filter(name=fields["name"]).exists():
                save_policy(policy=AutonomyPolicy(**fields), reason="demo data")
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
        added = 0 if options["no_history"] else seed_history()
        if not options["quiet_logins"]:
            self.stdout.write(self.style.SUCCESS(f"Demo data ready (agent: {agent.name})."))
            if added:
                self.stdout.write(f"Added {DAYS} days of history: {added} runs.")
            self.stdout.write("Demo logins (passwords are new on every start):")
            for username, password, role in logins:
                self.stdout.write(f"  {username:<8} {password:<14} {role}")
