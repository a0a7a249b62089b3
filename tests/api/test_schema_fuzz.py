"""Property-based fuzz of the API from its own OpenAPI schema: no input makes it crash, and
every answer matches what the schema promises."""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from api.actions import create_api_token, submit_action

REPLY = {"ticket_id": "T-1", "to": "ada@example.com", "body": "Hi"}


schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())


@pytest.fixture
def keep_the_test_transaction():
    # As Django's test client does: the test's transaction must outlive each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(keep_the_test_transaction, agent, alice, policies):
    token, raw = create_api_token(agent=agent, reviewer=True, user=alice)
    # Something to find, decide and report on, besides what the fuzzer makes up.
    submit_action(
        token=token, action_type="send_reply", payload=REPLY, confidence=0.9, idempotency_key="a"
    )
    submit_action(
        token=token,
        action_type="update_crm",
        payload={"ticket_id": "T"},
        confidence=0.9,
        idempotency_key="b",
    )
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_crashes_the_api_and_answers_match_the_schema(case, auth_headers):
    # Everything but "schema-valid data is accepted" (ST202) and "anything else is refused"
    # (ST201): the API validates meaning too (a workflow must exist, a failure needs an error),
    # and ignores unknown query parameters, as HTTP APIs do.
    case.call_and_validate(
        headers=auth_headers,
        excluded_checks=[checks.positive_data_acceptance, checks.negative_data_rejection],
    )
