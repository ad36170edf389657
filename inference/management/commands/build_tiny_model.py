from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.tiny_model import build_tiny_model


class Command(BaseCommand):
    help = (
        "Write a tiny vLLM-loadable Llama model with random weights into DIR, in seconds and "
        "without network: for tests, CI and the demo. Its weights are random, so its text is "
        "gibberish; register a real model for real work."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="Where to write the model.")
        parser.add_argument(
            "--seed", type=int, default=0, help="Weight seed: the same seed, the same files."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        directory = build_tiny_model(options["directory"], seed=options["seed"])
        size = sum(path.stat().st_size for path in directory.iterdir())
        self.stdout.write(
            f"Wrote the tiny model to {directory} ({size / 1e6:.1f} MB) in "
            f"{time.monotonic() - started:.1f}s. Its text output is gibberish."
        )
