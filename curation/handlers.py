"""Result handlers the worker calls when a batch reaches a terminal state."""

from __future__ import annotations

from batches.models import Batch
from curation import services


def import_batch(batch: Batch) -> None:
    """Create or extend a curation queue when a completed batch's metadata names a schema.

    Listed in settings.BATCH_RESULT_HANDLERS. Safe to call again after a retry: the import
    skips what is already there.
    """
    services.queue_import_from_metadata(batch=batch)
