"""Live sessions (jobs/live.py): which worker holds a session's CLI, and the history its last turn left."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0012_job_parent_source_policy_choices"),
    ]

    operations = [
        migrations.AddField(
            model_name="claudesession",
            name="live_worker",
            field=models.CharField(blank=True, db_index=True, default="", max_length=200),
        ),
        migrations.AddField(
            model_name="claudesession",
            name="live_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="claudesession",
            name="history_fps",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
