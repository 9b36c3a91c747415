"""Attachments (files sent with a job) and artifacts (files a job wrote), and the
hourly schedule that deletes finished jobs past JOB_RETENTION_DAYS with their files."""

import django.db.models.deletion
import jobs.models
from django.db import migrations, models


RETENTION_SCHEDULE = "claudesvc: delete expired jobs"


def create_retention_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=RETENTION_SCHEDULE,
        defaults={"func": "jobs.tasks.delete_expired_jobs", "schedule_type": "H", "repeats": -1},
    )


def remove_retention_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=RETENTION_SCHEDULE).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_reaper_schedule'),
        ('django_q', '0018_task_success_index'),
    ]

    operations = [
        migrations.CreateModel(
            name='Artifact',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=255)),
                ('content_type', models.CharField(max_length=100)),
                ('size', models.PositiveBigIntegerField()),
                ('sha256', models.CharField(max_length=64)),
                ('file', models.FileField(max_length=500, upload_to=jobs.models.artifact_upload_to)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='%(class)ss', to='jobs.job')),
            ],
            options={
                'ordering': ['job', 'name'],
                'constraints': [models.UniqueConstraint(fields=('job', 'name'), name='artifact_unique_name')],
            },
        ),
        migrations.CreateModel(
            name='Attachment',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=255)),
                ('content_type', models.CharField(max_length=100)),
                ('size', models.PositiveBigIntegerField()),
                ('sha256', models.CharField(max_length=64)),
                ('file', models.FileField(max_length=500, upload_to=jobs.models.attachment_upload_to)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='%(class)ss', to='jobs.job')),
            ],
            options={
                'ordering': ['job', 'id'],
                'constraints': [models.UniqueConstraint(fields=('job', 'name'), name='attachment_unique_name')],
            },
        ),
        migrations.RunPython(create_retention_schedule, remove_retention_schedule),
    ]
