"""What a django-q2 worker process does as it spawns: the GPU worker's heartbeat, the CPU
cluster's recovery of work a killed cluster left behind."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django_q.conf import Conf

from batchsite.schedules import schedules_ensure
from inference import services

logger = logging.getLogger(__name__)


def on_worker_spawn(sender: Any, proc_name: str, **kwargs: Any) -> None:
    if Conf.CLUSTER_NAME == services.CPU_CLUSTER:
        # A CPU cluster killed mid-finalization left its task locked in the broker for the
        # retry period: finish such batches now (finalization is safe to run twice).
        try:
            services.finalizations_resume()
            schedules_ensure()
        except Exception:
            # Recovery is a courtesy: a cluster that cannot do it must still run tasks (if this
            # raised, django-q2 would reincarnate the process, which would raise again).
            logger.exception("cpu cluster: recovery at start failed; tasks run regardless")
        return
    if Conf.CLUSTER_NAME != services.GPU_CLUSTER:
        return
    from inference.worker import cpu_priority_lower, worker_current

    # Before vLLM spawns its engine processes: they inherit it.
    cpu_priority_lower(settings.WORKER_NICE)
    worker_current()
    # Work may be waiting from before a restart (a killed worker's batch): pick it up now.
    services.workers_wake()
