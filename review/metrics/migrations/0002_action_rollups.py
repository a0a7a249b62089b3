"""Daily action rollups, kept exact by triggers on the action table (review/metrics/rollups.py)."""

from django.db import migrations, models


def install(apps, schema_editor):
    from review.metrics import rollups

    vendor = schema_editor.connection.vendor
    # Triggers first: creating them locks writers out of the action table until this
    # migration commits, so the backfill below and the triggers never miss or double a row.
    for sql in rollups.trigger_sql(vendor):
        schema_editor.execute(sql)
    with schema_editor.connection.cursor() as cursor:
        rollups.backfill(cursor, vendor)


def uninstall(apps, schema_editor):
    from review.metrics import rollups

    for sql in rollups.drop_trigger_sql(schema_editor.connection.vendor):
        schema_editor.execute(sql)



class Migration(migrations.Migration):

    dependencies = [
        ('metrics', '0001_initial'),
        ('workflows', '0003_engine_dag_leases_state'),
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
                ('n', models.BigIntegerField()),
            ],
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
        migrations.RunPython(install, uninstall),
    ]
