"""The hot path Slack waits on: a signed Approve, counted in queries."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escalations.models import Decision
from escalations.slack import blocks

from .conftest import click, deliver_all, link, make_escalation, post_signed


@pytest.mark.django_db
def test_a_signed_approve_costs_a_bounded_number_of_queries(slack, agent, policies, alice, client):
    esc = make_escalation(agent)
    deliver_all()
    link("U_ALICE", alice)
    with CaptureQueriesContext(connection) as ctx:
        assert post_signed(client, click(esc, blocks.APPROVE)).status_code == 200
    assert Decision.objects.filter(escalation=esc).exists()
    sql = [q["sql"] for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"]]
    # Slack's own share: the replay nonce, the identity, one UPDATE of the outbox rows
    # (its row count says whether a delivery must be enqueued: no SELECT first).
    ours = [s for s in sql if re.search(r'(FROM|INTO|UPDATE) "slack_', s)]
    assert [s.split()[0] for s in ours] == ["INSERT", "SELECT", "UPDATE"], "\n".join(
        q[:120] for q in ours
    )
    # The rest is the decide action every channel shares: the reviewer's teams, the
    # escalation, the conditional UPDATE, the Decision, the run's resume (its outbox row:
    # never lost), the action, the trace event, the outbox row that sends the Slack sync
    # (kept through a broker outage), the agent's webhook. Each statement is a round trip
    # Slack's ack waits on.
    assert len(sql) <= 12, "\n".join(q[:120] for q in sql)
