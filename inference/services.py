"""Scheduling, leases and chunked execution of batches on the GPU worker."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from django_q.models import OrmQ
from django_q.tasks import async_task

from inference.models import RegisteredModel

GPU_CLUSTER = "gpu"


def workers_wake() -> None:
    """Make sure a GPU task is waiting to pick up runnable batches.

    One pending task is enough: a running task keeps claiming batches until none is left, so
    we only enqueue when nothing is queued and not yet taken (lock in the past = not taken).
    """
    pending = OrmQ.objects.filter(key=GPU_CLUSTER, lock__lte=timezone.now()).exists()
    if not pending:
        async_task("inference.tasks.run_batches", cluster=GPU_CLUSTER, group="gpu")


# --- Registry -------------------------------------------------------------------------------
def model_register(
    *,
    name: str,
    source: str,
    engine_args: dict[str, Any] | None = None,
    default_sampling: dict[str, Any] | None = None,
    enabled: bool = True,
) -> tuple[RegisteredModel, bool]:
    """Create the model, or update it: given engine arguments merge over the stored ones."""
    model, created = RegisteredModel.objects.get_or_create(
        name=name,
        defaults={
            "source": source,
            "engine_args": engine_args or {},
            "default_sampling": default_sampling or {},
            "enabled": enabled,
        },
    )
    if not created:
        model.source = source
        model.engine_args = {**model.engine_args, **(engine_args or {})}
        if default_sampling is not None:
            model.default_sampling = default_sampling
        model.enabled = enabled
        model.save(update_fields=["source", "engine_args", "default_sampling", "enabled", "updated_at"])
    return model, created
