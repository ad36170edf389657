"""The table of the ``throttle`` database cache (settings.CACHES), which rate limits count in."""

from typing import Any

from django.core.management import call_command
from django.db import migrations

# settings.CACHES["throttle"]["LOCATION"], fixed here as a migration must be.
TABLE = "batch_throttle_cache"


def cache_table_create(apps: Any, schema_editor: Any) -> None:
    call_command("createcachetable", TABLE, database=schema_editor.connection.alias)


def cache_table_drop(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("batches", "0002_webhooks")]

    operations = [migrations.RunPython(cache_table_create, cache_table_drop)]
