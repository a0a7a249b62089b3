"""Daily rollups of actions, runs and model calls, kept exact by triggers on their tables
(review/metrics/rollups.py)."""

from django.db import migrations, models


def install(apps, schema_editor):
    from review.metrics import rollups

    vendor = schema_editor.connection.vendor
    # Triggers first: creating them locks writers out of the source tables until this
    # migration commits, so the backfill below and the triggers never miss or double a row.
    for sql in rollups.trigger_sql(vendor):
        schema_editor.execute(sql)
    with schema_editor.connection.cursor() as cursor:
        for rollup in rollups.ROLLUPS:
            rollups.backfill(cursor, vendor, rollup)
            if vendor == "postgresql":
                # Every reading scans the delta table and compaction empties it each minute:
                # vacuum it by row count, not by the share of a table that is always small.
                cursor.execute(
                    f"ALTER TABLE {rollup.delta_table} SET (autovacuum_vacuum_scale_factor = 0, "
                    "autovacuum_vacuum_threshold = 5000)"
                )


def uninstall(apps, schema_editor):
    from review.metrics import rollups

    for sql in rollups.drop_trigger_sql(schema_editor.connection.vendor):
        schema_editor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ('metrics', '0001_initial'),
        ('workflows', '0005_action_rate_cap_index'),
        ('prompts', '0001_initial'),
        ('escalations', '0006_policy_cache_stamp_triggers'),
    ]

    operations = [
        migrations.CreateModel(
            name='ActionDelta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('action_type', models.CharField(max_length=100)),
                ('outcome', models.CharField(max_length=8)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='DecisionDelta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('action_type', models.CharField(max_length=100)),
                ('team_id', models.BigIntegerField()),
                ('kind', models.CharField(max_length=16)),
                ('bin', models.SmallIntegerField()),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='ModelCallDelta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('n', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=6, default=0, max_digits=18)),
                ('input_tokens', models.BigIntegerField(default=0)),
                ('output_tokens', models.BigIntegerField(default=0)),
            ],
            options={
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='RunDelta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('status', models.CharField(max_length=16)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='ActionDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('action_type', models.CharField(max_length=100)),
                ('outcome', models.CharField(max_length=8)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'indexes': [models.Index(fields=['day'], name='action_day_day')],
                'constraints': [models.UniqueConstraint(fields=('day', 'agent_id', 'workflow', 'action_type', 'outcome'), name='action_day_key')],
            },
        ),
        migrations.CreateModel(
            name='DecisionDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('action_type', models.CharField(max_length=100)),
                ('team_id', models.BigIntegerField()),
                ('kind', models.CharField(max_length=16)),
                ('bin', models.SmallIntegerField()),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'indexes': [models.Index(fields=['day'], name='decision_day_day')],
                'constraints': [models.UniqueConstraint(fields=('day', 'agent_id', 'workflow', 'action_type', 'team_id', 'kind', 'bin'), name='decision_day_key')],
            },
        ),
        migrations.CreateModel(
            name='ModelCallDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('n', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=6, default=0, max_digits=18)),
                ('input_tokens', models.BigIntegerField(default=0)),
                ('output_tokens', models.BigIntegerField(default=0)),
            ],
            options={
                'indexes': [models.Index(fields=['day'], name='model_call_day_day')],
                'constraints': [models.UniqueConstraint(fields=('day', 'agent_id', 'workflow'), name='model_call_day_key')],
            },
        ),
        migrations.CreateModel(
            name='RunDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('agent_id', models.BigIntegerField()),
                ('workflow', models.CharField(blank=True, max_length=100)),
                ('status', models.CharField(max_length=16)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'indexes': [models.Index(fields=['day'], name='run_day_day')],
                'constraints': [models.UniqueConstraint(fields=('day', 'agent_id', 'workflow', 'status'), name='run_day_key')],
            },
        ),
        migrations.RunPython(install, uninstall),
    ]
