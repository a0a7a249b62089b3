"""A run's row is rewritten about nine times in its life, and almost every rewrite wrote an
entry in each of its nine indexes (issue 20): 18 of 5,400 updates were HOT in 600 approval
runs. Two things stopped them:

- `run_status_updated` (status, updated_at): every write of the engine moves `updated_at`,
  so no update could be HOT. Its readers are the drain's claim of pending runs (oldest
  first) and beat's scans of pending, running and waiting runs; (status, created_at) serves
  the claim's order (a run is pending from its creation, or again when a person reopens it:
  then it is the oldest, and goes first) and the scans by status as well.
- A run's page had no room for another version of its row: fillfactor 70 (PostgreSQL),
  as for steps (0009).

Measured (600 approval runs, one process, `pg_stat_user_tables`): 1,352 of 5,400 updates
HOT, and 40.3 KB of WAL per run instead of 46.5. The updates that stay non-HOT change an
indexed column on purpose: the status, `ready_at` (a decision's mark) or `wake_at`.
"""

from django.db import migrations, models


def _fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE workflows_workflowrun SET (fillfactor = 70)")


def _as_before(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE workflows_workflowrun RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0009_write_fewer_index_entries"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="workflowrun", name="run_status_updated"),
        migrations.AddIndex(
            model_name="workflowrun",
            index=models.Index(fields=["status", "created_at"], name="run_status_created"),
        ),
        migrations.RunPython(_fillfactor, _as_before),
    ]
