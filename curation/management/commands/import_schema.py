"""python manage.py import_schema FILE... : import conquest schema JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from curation.schemas import SchemaError, schema_import


class Command(BaseCommand):
    help = "Import conquest schemas from JSON files; a changed schema needs a new version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", type=Path)

    def handle(self, *args: Any, files: list[Path], **options: Any) -> None:
        for file in files:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                schema, created = schema_import(data=data)
            except OSError as error:
                raise CommandError(f"{file}: {error.strerror or error}") from error
            except (ValueError, SchemaError) as error:
                raise CommandError(f"{file}: {error}") from error
            verb = "Imported" if created else "Unchanged"
            self.stdout.write(f"{verb}: {schema.key} version {schema.version} ({schema.name})")
