from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="inference.sweep",
        defaults={
            "func": "inference.tasks.sweep",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
            "cluster": "cpu",
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="inference.sweep").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0001_initial"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
