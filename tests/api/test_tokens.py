from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from api.actions import create_api_token, revoke_api_token
from api.models import ApiToken, hash_token
from workflows.models import Action

from .conftest import Api, action_body

pytestmark = pytest.mark.django_db


def test_no_token_is_401_with_a_bearer_challenge(client, policies):
    r = Api(client, None).post("/actions", action_body())
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Bearer"
    assert not Action.objects.exists()


@pytest.mark.parametrize("header", ["Bearer nope", "Basic YTpi", "Bearer", "cal_x"])
def test_a_wrong_token_is_401(client, policies, header):
    r = client.get("/api/v1/escalations", headers={"Authorization": header})
    assert r.status_code == 401


def test_a_revoked_token_is_401_at_once(client, policies, agent_token):
    token, raw = agent_token
    assert revoke_api_token(token=token)
    assert not revoke_api_token(token=token)
    assert Api(client, raw).post("/actions", action_body()).status_code == 401


def test_only_the_hash_is_stored(agent_token):
    token, raw = agent_token
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.key_hash == hash_token(raw)
    assert raw not in {v for v in stored.__dict__.values() if isinstance(v, str)}
    assert raw.startswith(stored.prefix)


def test_using_a_token_records_when(api, policies, agent_token):
    api.post("/actions", action_body())
    assert ApiToken.objects.get(pk=agent_token[0].pk).last_used_at is not None


def test_the_command_prints_a_working_token_once(client, agent, policies):
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "--agent", "triage-agent", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    assert raw.startswith("cal_")
    assert "Shown once" in err.getvalue()
    assert Api(client, raw).post("/actions", action_body()).status_code == 201


def test_the_command_makes_reviewer_tokens_for_a_named_user(agent, alice):
    out = StringIO()
    call_command(
        "create_api_token",
        "--agent",
        "triage-agent",
        "--reviewer",
        "--user",
        "alice",
        stdout=out,
        stderr=StringIO(),
    )
    token = ApiToken.objects.get()
    assert token.reviewer and token.user == alice


def test_the_command_refuses_a_reviewer_token_without_a_person(agent):
    with pytest.raises(CommandError, match="--user"):
        call_command("create_api_token", "--agent", "triage-agent", "--reviewer", stdout=StringIO())
    assert not ApiToken.objects.exists()


def test_the_command_refuses_an_unknown_agent_or_user(agent):
    with pytest.raises(CommandError, match="No agent named"):
        call_command("create_api_token", "--agent", "ghost", stdout=StringIO())
    with pytest.raises(CommandError, match="No user named"):
        call_command(
            "create_api_token",
            "--agent",
            "triage-agent",
            "--reviewer",
            "--user",
            "ghost",
            stdout=StringIO(),
        )
    assert not ApiToken.objects.exists()


def test_the_revoke_command_revokes_by_prefix(agent):
    token, _ = create_api_token(agent=agent)
    call_command("revoke_api_token", token.prefix, stdout=StringIO())
    assert ApiToken.objects.get().revoked_at is not None


def test_the_admin_shows_a_new_token_once_and_it_works(client, admin_user, agent, policies):
    client.force_login(admin_user)
    r = client.post(
        "/admin/api/apitoken/add/", {"agent": agent.pk, "name": "ci", "reviewer": "", "user": ""}
    )
    assert r.status_code == 200, r.content[:500]
    token = ApiToken.objects.get()
    page = r.content.decode()
    raw = page.split("<code>")[1].split("</code>")[0]
    assert raw.startswith(token.prefix)
    assert "no-store" in r["Cache-Control"]
    assert token.key_hash == hash_token(raw)
    # Never again: the change page shows the prefix, not the token.
    assert raw not in client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()


def test_the_admin_refuses_a_reviewer_token_without_a_person(client, admin_user, agent):
    from escalations.actions import system_user

    client.force_login(admin_user)
    for user in ("", system_user().pk):
        r = client.post(
            "/admin/api/apitoken/add/",
            {"agent": agent.pk, "name": "ci", "reviewer": "on", "user": user},
        )
        assert r.status_code == 200
        assert "errorlist" in r.content.decode()
    assert not ApiToken.objects.exists()


def test_the_admin_revokes_tokens(client, admin_user, agent_token):
    client.force_login(admin_user)
    client.post(
        "/admin/api/apitoken/",
        {"action": "revoke", "_selected_action": [agent_token[0].pk]},
    )
    assert ApiToken.objects.get().revoked_at is not None
