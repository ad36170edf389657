"""django-q2 entry points: thin, they take ids and call services."""

from __future__ import annotations

from django.conf import settings

from batchsite.logging import log_context
from inference import services
from inference.worker import worker_current


def run_batches() -> int:
    """GPU cluster: run batches until none is left or the task's time budget is spent."""
    return services.batches_run(
        worker=worker_current(), budget_seconds=settings.WORKER_TASK_BUDGET_SECONDS
    )


def finalize_batch(batch_id: str) -> None:
    """CPU cluster: assemble the output and error files and end the batch."""
    with log_context(batch_id=batch_id):
        services.batch_finalize(batch_id=batch_id)


def sweep() -> dict[str, int]:
    """CPU cluster, every minute: expiry, orphaned batches, stuck finalizations."""
    return services.batches_sweep()
