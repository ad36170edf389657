from __future__ import annotations

import io
import json
import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Submit a small chat batch to a running server through the openai SDK, wait for it with "
        "a progress bar, and print a few output lines."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
        parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
        parser.add_argument("--model", default="")
        parser.add_argument("--requests", type=int, default=20)
        parser.add_argument("--max-tokens", type=int, default=16)
        parser.add_argument("--timeout", type=float, default=600.0)

    def handle(self, *args: Any, **options: Any) -> None:
        from openai import OpenAI

        if not options["api_key"]:
            raise CommandError("Pass --api-key or set OPENAI_API_KEY (make run prints one).")
        client = OpenAI(base_url=options["base_url"], api_key=options["api_key"])
        model = options["model"] or client.models.list().data[0].id
        lines = [
            json.dumps(
                {
                    "custom_id": f"demo-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": model,
                        "messages": [{"role": "user", "content": f"Tell me fact number {i}."}],
                        "max_tokens": options["max_tokens"],
                        "seed": i,
                    },
                }
            )
            for i in range(options["requests"])
        ]
        upload = client.files.create(
            file=("demo.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        self.stdout.write(f"Created {batch.id} with {len(lines)} requests for model {model}.")
        deadline = time.monotonic() + options["timeout"]
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if time.monotonic() > deadline:
                raise CommandError(f"Gave up waiting: {batch.id} is still {batch.status}.")
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            total = (counts.total if counts else 0) or len(lines)
            filled = int(30 * done / total)
            self.stdout.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {batch.status:<12}",
                ending="",
            )
            self.stdout.flush()
        self.stdout.write("")
        if batch.status != "completed":
            raise CommandError(f"{batch.id} ended {batch.status}: {batch.errors}")
        if batch.output_file_id:
            content = client.files.content(batch.output_file_id).text.splitlines()
            for raw in content[:3]:
                line = json.loads(raw)
                text = line["response"]["body"]["choices"][0]["message"]["content"]
                self.stdout.write(f"{line['custom_id']}: {text!r}")
        usage = batch.usage
        if usage:
            self.stdout.write(
                f"Done: {usage.input_tokens} input and {usage.output_tokens} output tokens."
            )
