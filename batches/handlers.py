"""Result handlers: plugins called once a batch reaches a terminal state.

Each dotted path in settings.BATCH_RESULT_HANDLERS names a callable ``handler(batch)``. Each runs
in its own task on the CPU cluster, so a failing handler never touches the batch or the others.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils.module_loading import import_string
from django_q.tasks import async_task

from batches.models import Batch

logger = logging.getLogger(__name__)


def handlers_dispatch(*, batch_id: str) -> None:
    for path in settings.BATCH_RESULT_HANDLERS:
        async_task("batches.handlers.handler_run", path, batch_id, cluster="cpu", group="handlers")


def handler_run(path: str, batch_id: str) -> None:
    batch = Batch.objects.get(pk=batch_id)
    handler = import_string(path)
    try:
        handler(batch)
    except Exception:
        logger.exception("result handler %s failed for batch %s", path, batch_id)
        raise
