"""Read-only figures about the queue, the workers and past work, for operator pages and metrics.

Everything is computed from the rows the worker commits (Batch counts, BatchChunk per finished
chunk, Worker heartbeats), so the web process sees what every GPU machine did without talking
to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from batches.models import Batch
from inference.models import BatchChunk, RegisteredModel, Worker
from inference.services import batch_pick_order

# How many recent chunks of a model give its current speed: enough to smooth one odd chunk out.
RATE_WINDOW_CHUNKS = 20


@dataclass(frozen=True)
class Rate:
    """Speed measured over finished chunks: requests and output tokens per second of work."""

    requests_per_second: float
    tokens_per_second: float
    measured_at: datetime | None

    @classmethod
    def from_totals(
        cls, *, requests: int, tokens: int, seconds: float, measured_at: datetime | None
    ) -> Rate | None:
        if seconds <= 0 or requests <= 0:
            return None
        return cls(requests / seconds, tokens / seconds, measured_at)


def model_rates(model_names: Iterable[str]) -> dict[str, Rate]:
    """Each model's speed over its last RATE_WINDOW_CHUNKS chunks (models never run are absent)."""
    rates: dict[str, Rate] = {}
    for name in set(model_names):
        rows = list(
            BatchChunk.objects.filter(batch__model=name)
            .order_by("-created_at")
            .values("completed", "failed", "output_tokens", "seconds", "created_at")[
                :RATE_WINDOW_CHUNKS
            ]
        )
        rate = Rate.from_totals(
            requests=sum(r["completed"] + r["failed"] for r in rows),
            tokens=sum(r["output_tokens"] for r in rows),
            seconds=sum(r["seconds"] for r in rows),
            measured_at=rows[0]["created_at"] if rows else None,
        )
        if rate is not None:
            rates[name] = rate
    return rates


def batch_rate(batch_id: str) -> Rate | None:
    totals = BatchChunk.objects.filter(batch_id=batch_id).aggregate(
        completed=Sum("completed"),
        failed=Sum("failed"),
        tokens=Sum("output_tokens"),
        seconds=Sum("seconds"),
        last=Max("created_at"),
    )
    return Rate.from_totals(
        requests=(totals["completed"] or 0) + (totals["failed"] or 0),
        tokens=totals["tokens"] or 0,
        seconds=totals["seconds"] or 0.0,
        measured_at=totals["last"],
    )


def _remaining(batch: Batch) -> int:
    return max(batch.request_total - batch.request_completed - batch.request_failed, 0)


@dataclass(frozen=True)
class RunningBatch:
    batch: Batch
    worker: str
    done: int
    total: int
    rate: Rate | None
    eta_seconds: float | None

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0


@dataclass(frozen=True)
class WaitingBatch:
    batch: Batch
    position: int
    # Seconds from now until a worker should reach it; None while a model's speed is unknown.
    starts_in_seconds: float | None

    @property
    def requests_left(self) -> int:
        """Requests not yet run: a batch whose worker died part-way waits again with less to do."""
        return _remaining(self.batch)


@dataclass(frozen=True)
class QueueSnapshot:
    running: list[RunningBatch]
    waiting: list[WaitingBatch]
    validating: list[Batch]
    now: datetime = field(default_factory=timezone.now)


def batch_progress(batch: Batch) -> RunningBatch:
    rate = batch_rate(batch.id)
    remaining = _remaining(batch)
    eta = remaining / rate.requests_per_second if rate else None
    return RunningBatch(
        batch=batch,
        worker=batch.lease_owner,
        done=batch.request_completed + batch.request_failed,
        total=batch.request_total,
        rate=rate,
        eta_seconds=eta,
    )


def workers_alive(*, now: datetime | None = None) -> QuerySet[Worker]:
    now = now or timezone.now()
    max_age = timedelta(seconds=settings.READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS)
    return Worker.objects.filter(last_heartbeat_at__gte=now - max_age)


def queue_snapshot(*, now: datetime | None = None) -> QueueSnapshot:
    """The running batches, then the waiting ones in the order a worker would take them.

    The order is the worker's own (inference.services.batch_pick_order), seen from the model
    the freshest worker has loaded. A waiting batch's start is estimated as the time the
    batches ahead of it still need at their model's measured speed, plus a model load each
    time the model changes.
    """
    now = now or timezone.now()
    alive = list(workers_alive(now=now))
    live_names = {w.name for w in alive}
    runnable = list(Batch.objects.runnable().select_related("owner").order_by("id"))
    running_rows = [
        b
        for b in runnable
        if b.lease_owner in live_names and b.lease_expires_at and b.lease_expires_at > now
    ]
    waiting_rows = [b for b in runnable if b not in running_rows]
    running = [batch_progress(b) for b in running_rows]

    loaded_model = alive[0].loaded_model if alive else ""
    order = batch_pick_order(
        [
            {
                "id": b.id,
                "status": b.status,
                "model": b.model,
                "priority": b.priority,
                "expires_at": b.expires_at,
            }
            for b in waiting_rows
        ],
        loaded_model=loaded_model,
        now=now,
    )
    by_id = {b.id: b for b in waiting_rows}
    rates = model_rates([b.model for b in waiting_rows])
    load_seconds = _model_load_seconds()

    # Workers free up when the running batches end; with several workers the first to free
    # up takes the head of the queue, so the estimate starts at the soonest of them.
    etas = [r.eta_seconds for r in running]
    clock: float | None = (
        0.0 if not running else min((e for e in etas if e is not None), default=None)
    )
    current_model = running[0].batch.model if running else loaded_model
    waiting: list[WaitingBatch] = []
    for position, batch_id in enumerate(order, start=1):
        batch = by_id[batch_id]
        if clock is not None and batch.model != current_model:
            clock += load_seconds.get(batch.model, 0.0)
        waiting.append(WaitingBatch(batch=batch, position=position, starts_in_seconds=clock))
        rate = rates.get(batch.model)
        if batch.status == Batch.Status.CANCELLING:
            continue  # Only finalized: no time on the engine.
        if clock is not None:
            clock = clock + _remaining(batch) / rate.requests_per_second if rate else None
        current_model = batch.model
    validating = list(
        Batch.objects.filter(status=Batch.Status.VALIDATING).select_related("owner").order_by("id")
    )
    return QueueSnapshot(running=running, waiting=waiting, validating=validating, now=now)


def _model_load_seconds() -> dict[str, float]:
    """The latest measured load time per model, from the workers that loaded it."""
    loads: dict[str, float] = {}
    for name, seconds in (
        Worker.objects.exclude(model_load_seconds=None)
        .order_by("last_heartbeat_at")
        .values_list("loaded_model", "model_load_seconds")
    ):
        if seconds is not None:
            loads[name] = seconds
    return loads


# --- History ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputPoint:
    at: datetime
    tokens_per_second: float
    requests: int
    # The span of time the point sums up, starting at `at`: an hour, or a day for long spans.
    bucket: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class HistoryStats:
    per_status: dict[str, int]
    terminal: int
    success_rate: float | None
    request_success_rate: float | None
    model_rates: dict[str, Rate]
    throughput: list[ThroughputPoint]


def history_stats(batches: QuerySet[Batch]) -> HistoryStats:
    """Figures over the given (filtered) batches: counts, success rates, speeds, throughput."""
    per_status = dict.fromkeys(Batch.Status.values, 0)
    for row in batches.order_by().values("status").annotate(n=Count("id")):
        per_status[row["status"]] = row["n"]
    terminal = sum(per_status[s] for s in Batch.TERMINAL_STATUSES)
    requests = batches.filter(status=Batch.Status.COMPLETED).aggregate(
        total=Sum("request_total"), completed=Sum("request_completed")
    )
    chunks = BatchChunk.objects.filter(batch__in=batches.order_by().values("id"))
    per_model: dict[str, Rate] = {}
    for model_row in (
        chunks.values(model=F("batch__model"))
        .annotate(
            requests=Sum(F("completed") + F("failed")),
            tokens=Sum("output_tokens"),
            engine_seconds=Sum("seconds"),
            last=Max("created_at"),
        )
        .order_by("model")
    ):
        rate = Rate.from_totals(
            requests=model_row["requests"] or 0,
            tokens=model_row["tokens"] or 0,
            seconds=model_row["engine_seconds"] or 0.0,
            measured_at=model_row["last"],
        )
        if rate is not None:
            per_model[model_row["model"]] = rate
    return HistoryStats(
        per_status=per_status,
        terminal=terminal,
        success_rate=per_status[Batch.Status.COMPLETED] / terminal if terminal else None,
        request_success_rate=(
            (requests["completed"] or 0) / requests["total"] if requests["total"] else None
        ),
        model_rates=per_model,
        throughput=throughput_series(chunks),
    )


def throughput_series(chunks: QuerySet[BatchChunk]) -> list[ThroughputPoint]:
    """Output tokens per second of engine time, per hour (per day past three days of data)."""
    span = chunks.aggregate(first=Min("created_at"), last=Max("created_at"))
    if span["first"] is None:
        return []
    hourly = span["last"] - span["first"] <= timedelta(days=3)
    trunc: Any = TruncHour if hourly else TruncDay
    rows = (
        chunks.annotate(bucket=trunc("created_at"))
        .values("bucket")
        .annotate(
            tokens=Sum("output_tokens"),
            engine_seconds=Sum("seconds"),
            requests=Sum(F("completed") + F("failed")),
        )
        .order_by("bucket")
    )
    return [
        ThroughputPoint(
            at=row["bucket"],
            tokens_per_second=(
                (row["tokens"] or 0) / row["engine_seconds"] if row["engine_seconds"] else 0.0
            ),
            requests=row["requests"] or 0,
            bucket=timedelta(hours=1) if hourly else timedelta(days=1),
        )
        for row in rows
    ]


def models_overview() -> list[tuple[RegisteredModel, Rate | None, int]]:
    """Each registered model, its last measured speed, and how many batches wait for it."""
    models = list(RegisteredModel.objects.all())
    rates = model_rates(m.name for m in models)
    waiting = dict(
        Batch.objects.filter(
            Q(status=Batch.Status.VALIDATING) | Q(status__in=Batch.RUNNABLE_STATUSES)
        )
        .values_list("model")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [(m, rates.get(m.name), waiting.get(m.name, 0)) for m in models]
