from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference import services


def _engine_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CommandError(f"--engine-arg expects KEY=VALUE, got {text!r}.")
    try:
        value = json.loads(raw)  # numbers, booleans, null and JSON objects keep their type
    except ValueError:
        value = raw
    return key.strip(), value


class Command(BaseCommand):
    help = "Create or update a registered model: the name clients send and how vLLM loads it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Client-facing model name (body.model).")
        parser.add_argument("source", help="Local model directory or hub id.")
        parser.add_argument("--max-model-len", type=int, dest="max_model_len")
        parser.add_argument("--dtype")
        parser.add_argument(
            "--engine-arg",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Any vllm.LLM keyword argument; VALUE is read as JSON when it parses.",
        )
        parser.add_argument(
            "--default-sampling",
            help="JSON object of sampling defaults, e.g. '{\"max_tokens\": 256}'.",
        )
        parser.add_argument("--disabled", action="store_true", help="Register it disabled.")

    def handle(self, *args: Any, **options: Any) -> None:
        engine_args = dict(_engine_arg(item) for item in options["engine_arg"])
        if options["max_model_len"] is not None:
            engine_args["max_model_len"] = options["max_model_len"]
        if options["dtype"]:
            engine_args["dtype"] = options["dtype"]
        default_sampling = None
        if options["default_sampling"]:
            try:
                default_sampling = json.loads(options["default_sampling"])
            except ValueError as error:
                raise CommandError(f"--default-sampling is not JSON: {error}") from None
            if not isinstance(default_sampling, dict):
                raise CommandError("--default-sampling must be a JSON object.")
        model, created = services.model_register(
            name=options["name"],
            source=options["source"],
            engine_args=engine_args,
            default_sampling=default_sampling,
            enabled=not options["disabled"],
        )
        verb = "Registered" if created else "Updated"
        self.stdout.write(f"{verb} model {model.name!r} from {model.source}.")
