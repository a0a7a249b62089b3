"""Each escalation's queue card (escalations.rendering.queue_card): what its row shows that
cannot change while it waits, written once so a page of the queue reads no payloads."""

from django.db import migrations, models


def backfill(apps, schema_editor):
    from escalations.rendering import queue_card

    Escalation = apps.get_model("escalations", "Escalation")
    rows = Escalation.objects.select_related("action", "action__run", "action__agent__team")
    batch = []
    for esc in rows.iterator(chunk_size=500):
        action = esc.action
        run = action.run
        agent = action.agent
        card = queue_card(
            action_type=action.action_type,
            payload=action.payload,
            ticket=run.input if run is not None else None,
            reasons=esc.reasons,
            agent=agent.name if agent is not None else "",
            workflow=run.workflow if run is not None else "",
            confidence=action.confidence,
            rationale=action.rationale,
            home_team=agent.team.name if agent is not None and agent.team_id else "",
        )
        esc.card = card
        batch.append(esc)
        if len(batch) >= 500:
            Escalation.objects.bulk_update(batch, ["card"])
            batch = []
    Escalation.objects.bulk_update(batch, ["card"])


class Migration(migrations.Migration):
    dependencies = [("escalations", "0009_decisions_only_by_people")]

    operations = [
        migrations.AddField(
            model_name="escalation",
            name="card",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
