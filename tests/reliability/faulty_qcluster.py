"""`manage.py qcluster` with a fault point, for the fault tests (never used outside tests).

``python -m tests.reliability.faulty_qcluster`` runs the cluster named by Q_CLUSTER_NAME exactly
as ``manage.py qcluster`` does. With FAULT_PAUSE set, the worker stops dead at that point (the
marker file FAULT_MARKER says it got there) so the test can SIGKILL it at a known moment:

- ``mid_chunk:<n>``: chunk n's results are computed and its output blob stored, but the chunk
  is not recorded yet (the worst moment: a blob exists that no row names);
- ``after_chunk:<n>``: chunk n is recorded, the next has not started;
- ``finalizing``: the batch's output file is stored, the batch is still ``finalizing``.

The cluster processes are forked from this one, so they inherit the patched functions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _pause(point: str) -> None:
    Path(os.environ["FAULT_MARKER"]).write_text(point)
    while True:  # until the test kills the process group
        time.sleep(60)


def install(spec: str) -> None:
    from inference import services

    kind, _, argument = spec.partition(":")
    if kind == "mid_chunk":
        index = int(argument)
        save_blob = services._save_blob

        def save_then_pause(name: str, lines: list[str]) -> str:
            saved = save_blob(name, lines)
            if f"/{index:06d}-" in name and name.endswith(".out.jsonl"):
                _pause(spec)
            return saved

        services._save_blob = save_then_pause
    elif kind == "after_chunk":
        index = int(argument)
        chunk_record = services.chunk_record

        def record_then_pause(**kwargs: Any) -> Any:
            chunk = chunk_record(**kwargs)
            if chunk.index == index:
                _pause(spec)
            return chunk

        services.chunk_record = record_then_pause
    elif kind == "finalizing":
        # Imported there from batches.services: patch the name inference.services calls.
        file_create_generated = vars(services)["file_create_generated"]

        def store_then_pause(**kwargs: Any) -> Any:
            file = file_create_generated(**kwargs)
            _pause(spec)
            return file

        vars(services)["file_create_generated"] = store_then_pause
    else:
        raise ValueError(f"unknown fault point {spec!r}")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchsite.settings")
    import django

    django.setup()
    if os.environ.get("FAULT_PAUSE"):
        install(os.environ["FAULT_PAUSE"])
    from django.core.management import call_command

    call_command("qcluster")
