"""Both seed workflows end to end in embedded mode: SQLite, the in-process thread worker on
the in-memory broker — the `make run` configuration, in a process of its own."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import json, time, os
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from escalations.models import AgentProfile, Team, AutonomyPolicy
from workflows.models import PolicyOutcome, RunStatus, WorkflowRun, Action
support = Team.objects.create(name="Support", slug="support")
AgentProfile.objects.create(name="triage-agent", team=support)
AgentProfile.objects.create(name="research-agent", team=support)
for t in ("update_crm", "send_reply", "route_to_team"):
    AutonomyPolicy.objects.create(
        name=t,
        action_type=t,
        outcome=PolicyOutcome.AUTO,
        min_confidence=0.1,
        irreversible_requires_review=False,
    )
from workflows.embedded import EmbeddedServices
from workflows.actions import start_run
svc = EmbeddedServices(); svc.start()
try:
    ticket = {
        "ticket_id": "T-1",
        "subject": "Charged twice",
        "body": "I was charged twice, fix the billing",
        "customer": "a@example.com",
    }
    runs = [
        start_run(workflow="support_triage", input=ticket),
        start_run(workflow="mention_research", input={"company": "Acme Robotics"}),
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [WorkflowRun.objects.get(pk=r.pk).status for r in runs]
        if all(s in ("succeeded", "waiting", "failed") for s in states):
            break
        time.sleep(0.2)
    result = {r.workflow: WorkflowRun.objects.get(pk=r.pk).status for r in runs}
    publish = Action.objects.filter(action_type="publish_response").first()
    result["publish_response"] = publish.status if publish else None
    print("RESULT " + json.dumps(result))
finally:
    svc.stop()
"""


def test_both_seed_workflows_run_end_to_end_in_embedded_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.main",
        SQLITE_PATH=str(tmp_path / "caliber.sqlite3"),
        DEBUG="1",
        PYTHONPATH=str(ROOT),
        SECRET_KEY="",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result == {
        "support_triage": "succeeded",
        "mention_research": "waiting",
        "publish_response": "escalated",
    }
