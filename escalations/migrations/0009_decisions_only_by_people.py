"""Decisions are made by people: a service account (an agent's `api-<agent>` user) can
never be recorded as deciding or approving, and the SLA's system user only via "system".

Enforced by the database, so no write path (an action, the admin, a fixture, raw SQL) can
record one."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TABLES = ("escalations_decision", "escalations_approval")
MESSAGE = "decisions are made by people: a service account cannot decide"

PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION escalations_decided_by_a_person() RETURNS trigger AS $$
DECLARE
    account_kind varchar;
BEGIN
    SELECT kind INTO account_kind FROM escalations_serviceaccount
    WHERE user_id = NEW.decided_by_id;
    IF account_kind IS NOT NULL AND NOT (account_kind = 'system' AND NEW.via = 'system') THEN
        RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
"""

SQLITE_CONDITION = (
    "EXISTS (SELECT 1 FROM escalations_serviceaccount s WHERE s.user_id = NEW.decided_by_id "
    "AND NOT (s.kind = 'system' AND NEW.via = 'system'))"
)


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION)
        for table in TABLES:
            schema_editor.execute(
                f"CREATE TRIGGER {table}_by_a_person BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION escalations_decided_by_a_person()"
            )
    elif vendor == "sqlite":
        for table in TABLES:
            for event in ("INSERT", "UPDATE"):
                schema_editor.execute(
                    f"CREATE TRIGGER {table}_by_a_person_{event.lower()} BEFORE {event} ON "
                    f"{table} WHEN {SQLITE_CONDITION} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
                )
    else:
        raise RuntimeError(f"no decided-by-a-person triggers for {vendor}")


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in TABLES:
        if vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_by_a_person ON {table}")
        else:
            for event in ("insert", "update"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_by_a_person_{event}")
    if vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS escalations_decided_by_a_person()")


def mark_existing_service_accounts(apps, schema_editor):
    """The system user, and the `api-<agent>` accounts earlier reviewer tokens decided as."""
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Agent = apps.get_model("escalations", "AgentProfile")
    ServiceAccount = apps.get_model("escalations", "ServiceAccount")
    for user in User.objects.filter(username="caliber-system"):
        ServiceAccount.objects.get_or_create(user=user, defaults={"kind": "system"})
    names = [f"api-{name}" for name in Agent.objects.values_list("name", flat=True)]
    for user in User.objects.filter(username__in=names):
        ServiceAccount.objects.get_or_create(user=user, defaults={"kind": "agent"})


class Migration(migrations.Migration):
    dependencies = [
        ("escalations", "0008_queue_risk_due_and_search"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ServiceAccount",
            fields=[
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="service_account",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[("system", "System"), ("agent", "Agent")], max_length=8
                    ),
                ),
            ],
        ),
        migrations.RunPython(mark_existing_service_accounts, migrations.RunPython.noop),
        migrations.RunPython(forwards, backwards),
    ]
