"""Prometheus metrics at /metrics: the web process's own counters plus figures from the database.

Two sources, chosen by where the truth lives:

* **In-process** (prometheus_client counters in the web process): HTTP requests and latencies by
  route *pattern* (``resolver_match.route``, so labels stay bounded whatever ids clients send)
  and upload bytes. Under gunicorn, batchsite/gunicorn.py sets ``PROMETHEUS_MULTIPROC_DIR``
  and the view sums every worker's files (prometheus_client's multiprocess mode), so a scrape
  sees the whole server whichever worker answers it.
* **From the database at scrape time** (:class:`DatabaseCollector`): everything the CPU and GPU
  workers do. Workers are django-q2 processes on other machines that serve no HTTP, restart
  freely and would lose in-memory counters; but they already commit every fact durably (Batch
  status and counts, one BatchChunk per finished chunk, Worker heartbeats, WebhookDelivery
  attempts). Reading those rows gives the same numbers whichever process answers the scrape,
  survives restarts, and needs neither a pushgateway nor a shared multiprocess directory across
  machines. "Totals" here are sums over rows, so they are counters that only fall when batches
  are deleted (Prometheus' ``rate()`` treats that as a reset). Each scrape runs a handful of
  aggregate queries; the chunk table grows by one row per few thousand requests, so they stay
  cheap.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "batchserver"

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by route pattern, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request, by route pattern and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
UPLOAD_BYTES = Counter(
    f"{PREFIX}_upload_bytes",
    "Bytes of files uploaded through the Files API, by purpose.",
    ["purpose"],
)

# Buckets for chunk durations: a chunk runs from seconds (a tiny model) to an hour.
CHUNK_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Workers silent for longer than this drop out of the per-worker series (bounded labels).
WORKER_SERIES_WINDOW = timedelta(days=1)


def route_label(request: HttpRequest) -> str:
    match = request.resolver_match
    if match is None:
        return "unmatched"
    return _route_pattern(str(match.route))


# A regex route's named group (DRF's routers: ``(?P<batch_id>[^/.]+)``) or a path converter
# (``<str:file_id>``), both shown as ``{batch_id}``.
_ROUTE_PARAMETER = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


@functools.cache
def _route_pattern(route: str) -> str:
    """``v1/^batches/(?P<batch_id>[^/.]+)$`` -> ``/v1/batches/{batch_id}``: one per route."""
    readable = _ROUTE_PARAMETER.sub(lambda m: "{" + (m[1] or m[2]) + "}", route)
    return "/" + readable.replace("^", "").replace("$", "")


class MetricsMiddleware:
    """Counts and times every request; placed right after RequestIdMiddleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        route = route_label(request)
        # Unknown methods would be an unbounded label: fold them into one.
        method = request.method if request.method in _METHODS else "other"
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def upload_record(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """post_save receiver on batches.File: counts client uploads (not server-written files)."""
    if created and instance.purpose in instance.UPLOAD_PURPOSES:
        UPLOAD_BYTES.labels(instance.purpose).inc(instance.bytes)


class DatabaseCollector(Collector):
    """Worker-side figures read from the database when Prometheus scrapes."""

    def collect(self) -> Iterable[Metric]:
        try:
            metrics = list(self._collect())
        except DatabaseError:
            logger.exception("metrics: cannot read the database")
            up = GaugeMetricFamily(
                f"{PREFIX}_database_up", "1 if /metrics could read the database."
            )
            up.add_metric([], 0)
            return [up]
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 if /metrics could read the database.")
        up.add_metric([], 1)
        return [up, *metrics]

    def _collect(self) -> Iterable[Metric]:
        from batches.models import Batch, WebhookDelivery
        from inference.models import BatchChunk, Worker

        now = timezone.now()

        batches = GaugeMetricFamily(f"{PREFIX}_batches", "Batches by status.", labels=["status"])
        counts = dict(Batch.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in Batch.Status.values:
            batches.add_metric([status], counts.get(status, 0))
        yield batches

        # A batch "runs" while a worker holds a live lease on it; otherwise it waits.
        live_lease = Q(lease_expires_at__gt=now) & ~Q(lease_owner="")
        queue = GaugeMetricFamily(
            f"{PREFIX}_queue_batches",
            "Batches not finished: validating, waiting for a worker, or running.",
            labels=["state"],
        )
        runnable = Batch.objects.runnable()
        queue.add_metric(["validating"], counts.get(Batch.Status.VALIDATING, 0))
        queue.add_metric(["waiting"], runnable.exclude(live_lease).count())
        queue.add_metric(["running"], runnable.filter(live_lease).count())
        yield queue

        waiting_requests = GaugeMetricFamily(
            f"{PREFIX}_queue_requests",
            "Requests of validated, unfinished batches not yet run, by model.",
            labels=["model"],
        )
        for model, remaining in (
            Batch.objects.filter(status=Batch.Status.IN_PROGRESS)
            .values_list("model")
            .annotate(n=Sum(F("request_total") - F("request_completed") - F("request_failed")))
            .order_by("model")
        ):
            waiting_requests.add_metric([model], remaining or 0)
        yield waiting_requests

        yield from self._chunks(BatchChunk)
        yield from self._workers(Worker, now)
        yield from self._webhooks(WebhookDelivery)

    def _chunks(self, chunk_model: Any) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_requests_processed",
            "Requests run by the engine, by model and outcome (sum over finished chunks).",
            labels=["model", "outcome"],
        )
        tokens = CounterMetricFamily(
            f"{PREFIX}_tokens_processed",
            "Tokens processed by the engine, by model and kind (sum over finished chunks).",
            labels=["model", "kind"],
        )
        engine_seconds = CounterMetricFamily(
            f"{PREFIX}_engine_seconds",
            "Seconds the engine spent on finished chunks, by model.",
            labels=["model"],
        )
        durations = HistogramMetricFamily(
            f"{PREFIX}_chunk_duration_seconds",
            "Time the engine took per finished chunk, by model.",
            labels=["model"],
        )
        bucket_counts = {
            f"le_{i}": Count("id", filter=Q(seconds__lte=le))
            for i, le in enumerate(CHUNK_SECONDS_BUCKETS)
        }
        rows = (
            chunk_model.objects.values(model=F("batch__model"))
            .annotate(
                n=Count("id"),
                sum_completed=Sum("completed"),
                sum_failed=Sum("failed"),
                sum_input_tokens=Sum("input_tokens"),
                sum_output_tokens=Sum("output_tokens"),
                sum_seconds=Sum("seconds"),
                **bucket_counts,
            )
            .order_by("model")
        )
        for row in rows:
            model = row["model"]
            requests.add_metric([model, "completed"], row["sum_completed"] or 0)
            requests.add_metric([model, "failed"], row["sum_failed"] or 0)
            tokens.add_metric([model, "input"], row["sum_input_tokens"] or 0)
            tokens.add_metric([model, "output"], row["sum_output_tokens"] or 0)
            engine_seconds.add_metric([model], row["sum_seconds"] or 0.0)
            buckets = [(str(le), row[f"le_{i}"]) for i, le in enumerate(CHUNK_SECONDS_BUCKETS)] + [
                ("+Inf", row["n"])
            ]
            durations.add_metric([model], buckets=buckets, sum_value=row["sum_seconds"] or 0.0)
        yield from (requests, tokens, engine_seconds, durations)

    def _workers(self, worker_model: Any, now: Any) -> Iterable[Metric]:
        labels = ["worker", "host"]
        heartbeat_age = GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds",
            "Seconds since each GPU worker's last heartbeat.",
            labels=labels,
        )
        throughput = GaugeMetricFamily(
            f"{PREFIX}_worker_throughput_tokens_per_second",
            "Output tokens per second over each worker's last finished chunk.",
            labels=[*labels, "model"],
        )
        load_time = GaugeMetricFamily(
            f"{PREFIX}_worker_model_load_seconds",
            "How long each worker took to load the model it holds.",
            labels=[*labels, "model"],
        )
        done = CounterMetricFamily(
            f"{PREFIX}_worker_requests_done",
            "Requests each worker has run since it started.",
            labels=labels,
        )
        busy = GaugeMetricFamily(
            f"{PREFIX}_worker_busy", "1 while a worker runs a batch.", labels=labels
        )
        alive = GaugeMetricFamily(
            f"{PREFIX}_workers_alive",
            "GPU workers whose heartbeat is fresh (READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS).",
        )
        fresh = 0
        max_age = settings.READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS
        for worker in worker_model.objects.filter(
            last_heartbeat_at__gte=now - WORKER_SERIES_WINDOW
        ):
            key = [worker.name, worker.host]
            age = max((now - worker.last_heartbeat_at).total_seconds(), 0.0)
            fresh += age <= max_age
            heartbeat_age.add_metric(key, age)
            throughput.add_metric([*key, worker.loaded_model], worker.throughput)
            if worker.model_load_seconds is not None and worker.loaded_model:
                load_time.add_metric([*key, worker.loaded_model], worker.model_load_seconds)
            done.add_metric(key, worker.requests_done)
            busy.add_metric(key, 1 if worker.current_batch_id else 0)
        alive.add_metric([], fresh)
        yield from (heartbeat_age, throughput, load_time, done, busy, alive)

    def _webhooks(self, delivery_model: Any) -> Iterable[Metric]:
        deliveries = GaugeMetricFamily(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries by outcome (pending, retrying, delivered, failed).",
            labels=["status"],
        )
        attempts = CounterMetricFamily(
            f"{PREFIX}_webhook_delivery_attempts",
            "HTTP attempts made to deliver webhooks, by the attempt's own outcome "
            "(delivered: a 2xx answer; error: anything else).",
            labels=["outcome"],
        )
        rows = {
            row["status"]: row
            for row in delivery_model.objects.values("status")
            .annotate(n=Count("id"), attempts=Sum("attempts"))
            .order_by()
        }
        for status in delivery_model.Status.values:
            deliveries.add_metric([status], rows.get(status, {}).get("n", 0))
        # Labelled by the attempt, not by the delivery's current status, so that no series falls
        # when a delivery moves on. A delivery stops at its first 2xx (and only a failed one is
        # sent again), so each delivered delivery made exactly one successful attempt and every
        # other attempt was an error: two sums, with no need to read each attempt_log.
        made = sum(row["attempts"] or 0 for row in rows.values())
        delivered = rows.get(delivery_model.Status.DELIVERED, {}).get("n", 0)
        attempts.add_metric(["delivered"], delivered)
        attempts.add_metric(["error"], made - delivered)
        yield from (deliveries, attempts)


_DATABASE_REGISTRY = CollectorRegistry()
_DATABASE_REGISTRY.register(DatabaseCollector())


def _process_registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        # prometheus_client leaves MultiProcessCollector.__init__ unannotated.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The exposition; if METRICS_TOKEN is set, scrapers must send it as a bearer token."""
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    body = generate_latest(_process_registry()) + generate_latest(_DATABASE_REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
