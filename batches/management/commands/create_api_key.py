from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from batches import services


class Command(BaseCommand):
    help = "Create an API key; the secret key is printed once, as the last line of the output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="What the key is for.")
        parser.add_argument(
            "--user", default="admin", help="Owner's username (created if missing)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key, raw = services.api_key_create_for_username(
            username=options["user"], name=options["name"]
        )
        self.stdout.write(f"Created API key {key.name!r} for user {key.owner}.")
        self.stdout.write(raw)
