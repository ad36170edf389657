"""Result handlers: plugins called once a batch reaches a terminal state.

``settings.BATCH_RESULT_HANDLERS`` lists dotted paths (env ``BATCH_RESULT_HANDLERS``, comma
separated). When a batch ends (completed, failed, expired or cancelled) the worker calls
:func:`handlers_dispatch`, which queues one task per handler on the CPU cluster. Each runs on its
own: a handler that raises is logged, noted in the batch's event log and run again later with
exponential backoff (``BATCH_HANDLER_MAX_ATTEMPTS``, ``BATCH_HANDLER_RETRY_SECONDS``); it never
changes the batch and never stops the other handlers.

Writing a handler
-----------------
A handler is a function that takes the terminal :class:`~batches.models.Batch`::

    # myproject/handlers.py
    from batches.handlers import batch_results

    def count_refusals(batch):
        if batch.status != "completed":
            return  # only finished work interests us
        refusals = sum(
            1
            for line in batch_results(batch)
            if line["response"] and "cannot help" in str(line["response"]["body"])
        )
        ...

and is switched on with ``BATCH_RESULT_HANDLERS=batches.webhooks.handle_batch_terminal,
myproject.handlers.count_refusals``. Rules:

* **Be idempotent.** A retry, or a worker killed mid-task, runs the handler again for the same
  batch: upsert rather than insert (see :mod:`batches.handler_examples`).
* **Stream.** :func:`batch_results` reads the output and error files one line at a time; a batch
  may hold 50,000 results, so never collect them in a list.
* **Raise to be retried.** Any exception schedules another attempt; return normally otherwise.
* Handlers run on the CPU cluster within ``Q_CPU_TIMEOUT``; hand long work to your own queue.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule
from django_q.tasks import async_task

from batches.events import batch_event_record
from batches.models import Batch, File
from batchsite.logging import log_context

logger = logging.getLogger(__name__)

CPU_CLUSTER = "cpu"


def backoff_delay(*, attempt: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait before try ``attempt + 1``: exponential, with "equal jitter".

    Half the exponential step is fixed and half random, so retries after one outage spread out
    instead of arriving together, yet never come much sooner than the step.
    """
    step = min(max_seconds, base_seconds * 2.0 ** (attempt - 1))
    return step / 2 + random.uniform(0.0, step / 2)


def task_run_later(func: str, *args: Any, delay_seconds: float) -> Schedule:
    """Queue ``func(*args)`` on the CPU cluster in ``delay_seconds`` (a one-off schedule).

    django-q2's own retry only re-delivers tasks whose worker died; a delay needs a schedule,
    which the cluster's scheduler turns into a task when it falls due and then deletes.
    """
    return Schedule.objects.create(
        func=func,
        args=repr(args),
        schedule_type=Schedule.ONCE,
        repeats=-1,
        next_run=timezone.now() + timedelta(seconds=delay_seconds),
        cluster=CPU_CLUSTER,
    )


def handlers_dispatch(*, batch_id: str) -> None:
    """Queue every configured handler for a batch that has just reached a terminal state."""
    for path in settings.BATCH_RESULT_HANDLERS:
        async_task(
            "batches.handlers.handler_run", path, batch_id, 1, cluster=CPU_CLUSTER, group="handlers"
        )


def handler_run(path: str, batch_id: str, attempt: int = 1) -> bool:
    """Run one handler once; on failure, log it and schedule the next attempt. True if it ran."""
    with log_context(batch_id=batch_id):
        batch = Batch.objects.filter(pk=batch_id).first()
        if batch is None:
            logger.warning("result handler %s skipped: batch %s no longer exists", path, batch_id)
            return False
        try:
            handler = import_string(path)
            handler(batch)
        except Exception as error:
            logger.exception(
                "result handler %s failed for batch %s (attempt %d)", path, batch_id, attempt
            )
            _retry_or_give_up(path, batch_id, attempt, error)
            return False
        batch_event_record(
            batch_id=batch_id,
            kind="handler_done",
            message=f"Result handler {path} finished.",
            handler=path,
            attempt=attempt,
        )
        return True


def _retry_or_give_up(path: str, batch_id: str, attempt: int, error: Exception) -> None:
    reason = f"{type(error).__name__}: {error}"[:500]
    if attempt >= settings.BATCH_HANDLER_MAX_ATTEMPTS:
        batch_event_record(
            batch_id=batch_id,
            kind="handler_failed",
            message=f"Result handler {path} failed {attempt} times and was given up: {reason}",
            handler=path,
            attempt=attempt,
            final=True,
        )
        return
    delay = backoff_delay(
        attempt=attempt,
        base_seconds=settings.BATCH_HANDLER_RETRY_SECONDS,
        max_seconds=settings.BATCH_HANDLER_RETRY_MAX_SECONDS,
    )
    task_run_later("batches.handlers.handler_run", path, batch_id, attempt + 1, delay_seconds=delay)
    batch_event_record(
        batch_id=batch_id,
        kind="handler_failed",
        message=f"Result handler {path} failed (attempt {attempt}): {reason}; "
        f"retrying in {delay:.0f}s.",
        handler=path,
        attempt=attempt,
        retry_in_seconds=round(delay, 1),
        final=False,
    )


def batch_results(batch: Batch) -> Iterator[dict[str, Any]]:
    """The batch's result lines, output file first then error file, one parsed line at a time.

    Each line is OpenAI's batch output object: ``{"id", "custom_id", "response", "error"}``.
    """
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is None:
            continue
        file = File.objects.filter(pk=file_id).first()
        if file is None:  # Deleted by its owner since: nothing left to read.
            continue
        with file.content.open("rb") as stream:
            for raw in stream:
                if raw.strip():
                    yield json.loads(raw)
