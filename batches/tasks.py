"""django-q2 entry points for the CPU cluster: they take ids and call services."""

from __future__ import annotations

from django_q.tasks import async_task

from batches import services

CPU_CLUSTER = "cpu"


def enqueue_validation(batch_id: str) -> None:
    async_task("batches.tasks.validate_batch", batch_id, cluster=CPU_CLUSTER, group="validate")


def validate_batch(batch_id: str) -> None:
    services.batch_validate(batch_id=batch_id)
