"""Retention: expired files leave storage and the database, by a task the CPU cluster schedules.

Two kinds of file carry an ``expires_at``: uploads sent with ``expires_after`` and the output
and error files of batches created with ``output_expires_after`` (set when the batch is
finalized). Both go the same way once that time has passed, with one exception: a file that a
batch which has not ended still reads is kept until that batch ends, and deleted by the first
run after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef
from django.utils import timezone

from batches import services
from batches.api.errors import ConflictError
from batches.models import Batch, File

logger = logging.getLogger(__name__)

# Files handled per run: a backlog drains over successive runs instead of one long task.
RETENTION_BATCH_SIZE = 1_000


@dataclass(frozen=True)
class RetentionReport:
    deleted: int
    deferred: int
    # Rows deleted whose stored content could not be removed (left for an operator to sweep).
    orphaned: int

    def as_dict(self) -> dict[str, int]:
        return {"deleted": self.deleted, "deferred": self.deferred, "orphaned": self.orphaned}


def files_delete_expired(
    *, now: datetime | None = None, limit: int = RETENTION_BATCH_SIZE
) -> RetentionReport:
    """Delete up to ``limit`` expired files; keep (defer) those an active batch reads."""
    now = now or timezone.now()
    read_by_active_batch = Exists(Batch.objects.active().filter(input_file_id=OuterRef("pk")))
    # Served by file_expiring_idx (a partial index over rows that have an expires_at).
    expired = File.objects.expired(now=now).alias(in_use=read_by_active_batch)
    deferred = expired.filter(in_use=True).count()
    deleted = orphaned = 0
    for file in expired.filter(in_use=False).order_by("expires_at", "id")[:limit]:
        try:
            # file_delete checks again: a batch created since the query above wins over expiry.
            services.file_delete(file=file)
        except ConflictError:
            deferred += 1
            continue
        except OSError:
            # The row is gone (the file no longer exists for clients); only the blob is left.
            logger.exception("retention: file %s deleted, but not its stored content", file.id)
            orphaned += 1
        deleted += 1
    if deleted or deferred:
        logger.info(
            "retention: %d expired files deleted, %d deferred (read by active batches)",
            deleted,
            deferred,
        )
    return RetentionReport(deleted=deleted, deferred=deferred, orphaned=orphaned)
