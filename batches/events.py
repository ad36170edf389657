"""The per-batch event log: what happened to a batch and when, shown on its operator page.

Writers call :func:`batch_event_record` at each step. Kinds in use: ``validated``,
``validation_failed``, ``started`` (a worker took the batch), ``chunk_done`` (with
``index``, ``requests``, ``tokens_per_second``), ``cancelled``, ``expired``, ``finalized``,
``failed``, ``handler_failed`` / ``handler_done`` (result handlers), ``webhook_delivered`` /
``webhook_failed``. The same line is logged, so the JSON logs and the page agree.
"""

from __future__ import annotations

import logging
from typing import Any

from batches.models import BatchEvent
from batchsite.logging import log_context

logger = logging.getLogger(__name__)

MAX_KIND_LENGTH = BatchEvent._meta.get_field("kind").max_length or 32


def batch_event_record(*, batch_id: str, kind: str, message: str, **data: Any) -> BatchEvent:
    """Store one event (``data`` must be JSON-serialisable) and log it with the batch's id."""
    if not kind or len(kind) > MAX_KIND_LENGTH:
        raise ValueError(f"event kind must be 1 to {MAX_KIND_LENGTH} characters, got {kind!r}")
    event = BatchEvent.objects.create(batch_id=batch_id, kind=kind, message=message, data=data)
    with log_context(batch_id=batch_id):
        logger.info(message, extra={"event": kind, "event_data": data})
    return event
