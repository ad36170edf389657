from django.db import migrations


def create_reviewers_group(apps, schema_editor):
    # Membership is what lets a user open the curation pages; staff need none.
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name="reviewers")


class Migration(migrations.Migration):
    dependencies = [
        ("curation", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create_reviewers_group, migrations.RunPython.noop)]
