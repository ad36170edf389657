"""Liveness (/health), readiness (/ready) and optional Sentry.

/health answers 200 as long as the process serves requests and touches nothing else, so a slow
database never gets a healthy web process restarted. /ready checks what serving batches needs:
the database, the django-q2 broker, and a GPU worker whose heartbeat is fresh. It answers 503
with every failed check named, so an operator sees at once which part is down.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as error:
        return f"database unreachable: {error}"
    return None


def check_queue() -> str | None:
    """The broker answers, and the CPU cluster takes its tasks (none has waited too long).

    Only the CPU queue is held to a wait limit: a GPU task legitimately waits for the batch in
    front of it, while CPU tasks (validation, finalization, webhooks) take seconds.
    """
    from django_q.brokers import get_broker
    from django_q.models import OrmQ

    q_cluster: dict[str, Any] = settings.Q_CLUSTER
    cpu_cluster: str = q_cluster["name"]
    clusters = [cpu_cluster, *q_cluster.get("ALT_CLUSTERS", {})]
    max_wait = settings.READY_QUEUE_MAX_WAIT_SECONDS
    try:
        for cluster in clusters:
            broker = get_broker(cluster)
            if not broker.ping():
                return f"task queue '{cluster}' does not answer"
            broker.queue_size()
        # An ORM-broker task not yet taken has its lock at the time it was queued.
        oldest = (
            OrmQ.objects.filter(key=cpu_cluster, lock__lte=timezone.now())
            .order_by("lock")
            .values_list("lock", flat=True)
            .first()
        )
    except DatabaseError as error:
        return f"task queue unreachable: {error}"
    if oldest is not None:
        waited = (timezone.now() - oldest).total_seconds()
        if waited > max_wait:
            return (
                f"a task has waited {waited:.0f}s in the '{cpu_cluster}' queue (limit "
                f"{max_wait}s): is its cluster (manage.py qcluster) running?"
            )
    return None


def check_worker_heartbeat() -> str | None:
    from inference.models import Worker

    max_age = timedelta(seconds=settings.READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS)
    try:
        latest = Worker.objects.order_by("-last_heartbeat_at").values_list(
            "last_heartbeat_at", flat=True
        )[:1]
        last = next(iter(latest), None)
    except DatabaseError as error:
        return f"cannot read worker heartbeats: {error}"
    if last is None:
        return "no GPU worker has ever sent a heartbeat"
    age = (timezone.now() - last).total_seconds()
    if age > max_age.total_seconds():
        return (
            f"no fresh GPU worker heartbeat: the latest is {age:.0f}s old "
            f"(limit {max_age.total_seconds():.0f}s)"
        )
    return None


READINESS_CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "queue": check_queue,
    "worker": check_worker_heartbeat,
}


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict[str, Any]] = {}
    for name, check in READINESS_CHECKS.items():
        problem = check()
        results[name] = {"ok": problem is None} | ({"error": problem} if problem else {})
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed:
        logger.warning("not ready: %s", ", ".join(failed), extra={"failed_checks": failed})
    return JsonResponse(
        {"status": "not ready" if failed else "ready", "failed": failed, "checks": results},
        status=503 if failed else 200,
    )


def sentry_init() -> bool:
    """Report errors to Sentry when SENTRY_DSN is set and sentry-sdk is installed."""
    dsn = os.environ.get("SENTRY_DSN", "")
    if not dsn:
        return False
    if importlib.util.find_spec("sentry_sdk") is None:
        logger.warning("SENTRY_DSN is set but the sentry-sdk package is not installed")
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        environment=os.environ.get("SENTRY_ENVIRONMENT") or None,
        traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0")),
        send_default_pii=False,
    )
    return True
