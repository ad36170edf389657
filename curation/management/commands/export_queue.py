"""python manage.py export_queue QUEUE --format F : a queue's reviewed items as training data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from curation.exports import FORMATS, export_lines
from curation.models import Queue


class Command(BaseCommand):
    help = (
        "Export a queue (by id or name) as in-context examples (icl), fine-tuning pairs "
        "(finetune), OpenAI chat fine-tuning JSONL (openai) or CSV (csv)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue", help="The queue's id or name.")
        parser.add_argument("--format", choices=sorted(FORMATS), default="openai")
        parser.add_argument(
            "--scope",
            choices=["gold", "reviewed"],
            default="gold",
            help="gold: gold-starred items (default); reviewed: every item with a submission.",
        )
        parser.add_argument("--output", "-o", type=Path, help="A file to write; default stdout.")

    def handle(self, *args: Any, **options: Any) -> None:
        queue = self._queue(options["queue"])
        items = queue.items.all()
        if options["scope"] == "gold":
            items = items.filter(gold_starred_at__isnull=False)
        lines = export_lines(queue=queue, items=items, format=options["format"])
        output: Path | None = options["output"]
        count = 0
        if output is None:
            for line in lines:
                self.stdout.write(line, ending="")
                count += 1
        else:
            with output.open("w", encoding="utf-8", newline="") as stream:
                for line in lines:
                    stream.write(line)
                    count += 1
            self.stderr.write(f"Wrote {count} lines to {output}")

    def _queue(self, reference: str) -> Queue:
        if reference.isdigit():
            queue = Queue.objects.filter(pk=int(reference)).first()
            if queue is not None:
                return queue
        matches = list(Queue.objects.filter(name=reference)[:2])
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise CommandError(f"Several queues are named {reference!r}; give the queue's id.")
        raise CommandError(f"No queue with id or name {reference!r}.")
