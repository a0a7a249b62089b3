"""The database keeps the policy cache stamp current itself, so every process sees every
change to policies or agent profiles — through the admin, an action, a fixture, a bulk
update or raw SQL — and no write path can forget to invalidate the compiled policy set."""

from django.db import migrations

TABLES = ("escalations_autonomypolicy", "escalations_agentprofile")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION escalations_bump_policy_cache_stamp() RETURNS trigger AS $$
BEGIN
    INSERT INTO escalations_policycachestamp (id, stamp)
    VALUES (1, md5(random()::text || clock_timestamp()::text || txid_current()::text))
    ON CONFLICT (id) DO UPDATE SET stamp = EXCLUDED.stamp;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION)
        for table in TABLES:
            # Per statement, not per row: a bulk change costs one stamp write.
            schema_editor.execute(
                f"CREATE TRIGGER {table}_cache_stamp AFTER INSERT OR UPDATE OR DELETE OR "
                f"TRUNCATE ON {table} FOR EACH STATEMENT "
                "EXECUTE FUNCTION escalations_bump_policy_cache_stamp()"
            )
    elif vendor == "sqlite":
        for table in TABLES:
            for event in ("INSERT", "UPDATE", "DELETE"):
                schema_editor.execute(
                    f"CREATE TRIGGER {table}_cache_stamp_{event.lower()} AFTER {event} ON "
                    f"{table} BEGIN INSERT OR REPLACE INTO escalations_policycachestamp "
                    "(id, stamp) VALUES (1, lower(hex(randomblob(16)))); END"
                )
    else:
        raise RuntimeError(f"no policy cache triggers for {vendor}")
    Stamp = apps.get_model("escalations", "PolicyCacheStamp")
    Stamp.objects.update_or_create(pk=1, defaults={"stamp": "initial"})


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in TABLES:
        if vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_cache_stamp ON {table}")
        else:
            for event in ("insert", "update", "delete"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_cache_stamp_{event}")
    if vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS escalations_bump_policy_cache_stamp()")


def initial_history(apps, schema_editor):
    """Version 1 of every existing policy, so actions evaluated before history was kept can
    still show what they were held to."""
    Policy = apps.get_model("escalations", "AutonomyPolicy")
    Historical = apps.get_model("escalations", "HistoricalAutonomyPolicy")
    fields = [
        f.attname
        for f in Policy._meta.concrete_fields
        if f.attname in {h.attname for h in Historical._meta.concrete_fields}
    ]
    for policy in Policy.objects.all():
        if not Historical.objects.filter(id=policy.pk).exists():
            Historical.objects.create(
                **{f: getattr(policy, f) for f in fields},
                history_date=policy.updated_at,
                history_type="~",
                history_change_reason="history starts here",
            )


class Migration(migrations.Migration):
    dependencies = [("escalations", "0005_autonomy_conditions_sla_quorum_history")]

    operations = [
        migrations.RunPython(forwards, backwards),
        migrations.RunPython(initial_history, migrations.RunPython.noop),
    ]
