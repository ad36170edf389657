from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from batches import services as batch_services
from inference import services
from inference.models import RegisteredModel


class Command(BaseCommand):
    help = (
        "Prepare the embedded default for `make run`: register the tiny demo model when no model "
        "is configured, and print a freshly made demo API key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-dir", default=str(settings.DATA_DIR / "models" / "tiny"))
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, **options: Any) -> None:
        if not RegisteredModel.objects.enabled().exists():
            model_dir = Path(options["model_dir"])
            if not (model_dir / "config.json").exists():
                call_command("build_tiny_model", str(model_dir))
            services.model_register(
                name="tiny-demo",
                source=str(model_dir.resolve()),
                engine_args={"max_model_len": 1024},
                default_sampling={"max_tokens": 32},
            )
            self.stdout.write(
                "Registered the tiny demo model as 'tiny-demo' (random weights: its text is "
                "gibberish; register a real model with `manage.py register_model`)."
            )
        names = ", ".join(RegisteredModel.objects.enabled().values_list("name", flat=True))
        _, raw_key = batch_services.api_key_create_for_username(username="demo", name="demo")
        url = options["url"]
        self.stdout.write(f"Models: {names}")
        self.stdout.write(f"API base URL: {url}/v1   (admin: {url}/admin/)")
        self.stdout.write(f"Try it: OPENAI_API_KEY={raw_key} python manage.py demo_batch")
        self.stdout.write(f"Demo API key: {raw_key}")
