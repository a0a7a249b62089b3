"""The triage queue: a graded risk, a due time for escalations without an SLA (the queue
orders by the SLA's, else this one), and the text reviewers search, with a stored tsvector
and a full-text index over the undecided rows on PostgreSQL (a column the model does not
declare: escalations.search reads it in SQL)."""

import django.db.models.functions.comparison
import django.utils.timezone
from django.db import migrations, models

UNDECIDED = ("open", "claimed")
DUE_MINUTES = {"critical": 10, "high": 30, "medium": 60, "low": 120}


def backfill(apps, schema_editor):
    """Undecided escalations opened before this: graded by their type's declaration only
    (the policy's bar is not at hand here), due and searchable like new ones."""
    from datetime import timedelta

    from escalations.search import search_text_for
    from workflows.tools import ACTION_TYPES

    Escalation = apps.get_model("escalations", "Escalation")
    rows = Escalation.objects.filter(status__in=UNDECIDED).select_related(
        "action", "action__run", "action__agent"
    )
    for esc in rows.iterator(chunk_size=500):
        tool = ACTION_TYPES.get(esc.action.action_type)
        if tool is None or not tool.reversible:
            risk = "high"
        elif tool.customer_facing or tool.amount_field:
            risk = "medium"
        else:
            risk = "low"
        run = esc.action.run
        Escalation.objects.filter(pk=esc.pk).update(
            risk=risk,
            due_without_sla_at=esc.created_at + timedelta(minutes=DUE_MINUTES[risk]),
            search_text=search_text_for(
                action_type=esc.action.action_type,
                agent=esc.action.agent.name,
                payload=esc.action.payload if isinstance(esc.action.payload, dict) else {},
                ticket=run.input if run is not None and isinstance(run.input, dict) else None,
                summary=esc.summary,
            ),
        )


# PostgreSQL only: the text's tsvector, stored (a generated column, so every write path
# keeps it, bulk inserts included), and a GIN index over the undecided rows. Stored rather
# than an expression index: a common word matches thousands of rows, and rechecking each
# by recomputing to_tsvector cost 0.5 s at 100k open, measured; reading it costs nothing.
SEARCH_COLUMN_SQL = [
    "ALTER TABLE escalations_escalation ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, search_text)) STORED",
    "CREATE INDEX esc_undecided_search ON escalations_escalation USING gin (search_vector) "
    "WHERE status IN ('open', 'claimed')",
]
DROP_SEARCH_COLUMN_SQL = [
    "DROP INDEX IF EXISTS esc_undecided_search",
    "ALTER TABLE escalations_escalation DROP COLUMN IF EXISTS search_vector",
]


def add_search_column(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in SEARCH_COLUMN_SQL:
            schema_editor.execute(sql)


def remove_search_column(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in DROP_SEARCH_COLUMN_SQL:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("escalations", "0007_undecided_queue_indexes"),
        ("workflows", "0003_engine_dag_leases_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="escalation",
            name="risk",
            field=models.CharField(
                choices=[
                    ("low", "Low"),
                    ("medium", "Medium"),
                    ("high", "High"),
                    ("critical", "Critical"),
                ],
                default="medium",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="escalation",
            name="due_without_sla_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="escalation",
            name="search_text",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RemoveIndex(model_name="escalation", name="esc_undecided_queue"),
        migrations.RemoveIndex(model_name="escalation", name="esc_undecided_team_queue"),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="escalation",
            index=models.Index(
                django.db.models.functions.comparison.Coalesce(
                    models.F("sla_due_at"), models.F("due_without_sla_at")
                ),
                models.F("created_at"),
                models.F("id"),
                models.F("team"),
                condition=models.Q(("status__in", UNDECIDED)),
                name="esc_undecided_due_queue",
            ),
        ),
        migrations.AddIndex(
            model_name="escalation",
            index=models.Index(
                models.F("team"),
                django.db.models.functions.comparison.Coalesce(
                    models.F("sla_due_at"), models.F("due_without_sla_at")
                ),
                models.F("created_at"),
                models.F("id"),
                condition=models.Q(("status__in", UNDECIDED)),
                name="esc_undecided_team_due_queue",
            ),
        ),
        migrations.RunPython(add_search_column, remove_search_column),
    ]
