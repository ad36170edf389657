from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="batches.retention",
        defaults={
            "func": "batches.retention_tasks.delete_expired_files",
            "schedule_type": "I",
            "minutes": 5,
            "repeats": -1,
            "cluster": "cpu",
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="batches.retention").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0002_sweep_schedule"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
