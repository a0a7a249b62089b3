from django.db import migrations, models
from django.db.models import F

# escalations.summary.PENDING_NOTE as it was when this ran: the summaries still waiting for
# the model when the per-escalation task gave way to the batched writer.
PENDING_NOTE = " (Template summary: the model's is being written.)"


def want_pending_summaries(apps, schema_editor):
    """Every summary still waiting is wanted now: the writer that replaces the old task finds
    them by this column (the old task's messages, if any are left, only wake it)."""
    Escalation = apps.get_model("escalations", "Escalation")
    Escalation.objects.filter(summary__endswith=PENDING_NOTE).update(
        summary_wanted_at=F("created_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("escalations", "0011_audit_rate_drift_hold_targets_audit_kind"),
    ]

    operations = [
        # Nullable without a default: added in place on SQLite too (no table remake, which
        # would drop the triggers on this table).
        migrations.AddField(
            model_name="escalation",
            name="summary_wanted_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="escalation",
            index=models.Index(
                models.F("summary_wanted_at"),
                condition=models.Q(("summary_wanted_at__isnull", False)),
                name="esc_summary_wanted",
            ),
        ),
        migrations.RunPython(want_pending_summaries, migrations.RunPython.noop, elidable=True),
    ]
