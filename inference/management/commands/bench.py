from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference import bench


class Command(BaseCommand):
    help = (
        "Measure the server beside bare vLLM on the same model and requests (engine, server, "
        "run-batch, ingest, API, memory); print a table and the ratios, optionally as JSON. "
        "Runs in its own database and file store under var/bench/, never the operator's."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--quick", action="store_true", help="A small version that runs in about two minutes."
        )
        parser.add_argument("--n", type=int, default=None, help="Requests (default 10,000).")
        parser.add_argument(
            "--model",
            default="",
            help="A registered model to benchmark (default: the tiny random-weight model).",
        )
        parser.add_argument("--json", default="", help="Also write the results to this file.")
        parser.add_argument(
            "--database-url",
            default="",
            help="A throwaway database for the bench (default: a fresh SQLite under var/bench/).",
        )
        # Internal: the re-run against the bench's database, and the bare-engine subprocess.
        parser.add_argument("--model-spec", default="", help="(internal)")
        parser.add_argument("--engine-child", default="", help="(internal)")

    def handle(self, *args: Any, **options: Any) -> None:
        role = os.environ.get(bench.ROLE_ENV, "")
        if options["engine_child"]:
            bench.engine_child(json.loads(options["engine_child"]), sys.stdin, sys.stdout)
            return
        if options["model_spec"]:
            if role != "orchestrate":
                raise CommandError("--model-spec is internal to manage.py bench.")
            results = bench.bench_orchestrate(
                quick=options["quick"],
                requests=options["n"],
                spec=json.loads(options["model_spec"]),
                json_path=options["json"],
            )
            self.stdout.write(bench.report_table(results))
            return
        code = bench.bench_launch(
            quick=options["quick"],
            requests=options["n"],
            model_name=options["model"],
            json_path=options["json"],
            database_url=options["database_url"],
        )
        if code:
            raise CommandError(f"The bench failed (exit status {code}); logs: {bench.WORK_DIR}.")
