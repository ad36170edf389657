"""Start the GPU worker's heartbeat as soon as its django-q2 process spawns."""

from __future__ import annotations

from typing import Any

from django_q.conf import Conf

from inference import services


def on_worker_spawn(sender: Any, proc_name: str, **kwargs: Any) -> None:
    if Conf.CLUSTER_NAME == services.CPU_CLUSTER:
        # A CPU cluster killed mid-finalization left its task locked in the broker for the
        # retry period: finish such batches now (finalization is safe to run twice).
        services.finalizations_resume()
        return
    if Conf.CLUSTER_NAME != services.GPU_CLUSTER:
        return
    from inference.worker import worker_current

    worker_current()
    # Work may be waiting from before a restart (a killed worker's batch): pick it up now.
    services.workers_wake()
