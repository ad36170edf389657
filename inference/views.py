"""Operator pages (staff only): the live queue, one batch, history and stats, workers, models.

One view and one template per page; an HTMX request gets only the page's named partial, so
polling swaps a fragment while the full page still works without JavaScript.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseStopPolling

from batches.models import Batch, WebhookDelivery
from inference import stats
from inference.models import BatchChunk, RegisteredModel, Worker

HISTORY_PAGE_SIZE = 50


def _render(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any]
) -> HttpResponse:
    name = f"{template}#{partial}" if getattr(request, "htmx", False) else template
    return TemplateResponse(request, name, context)


@require_GET
@staff_member_required
def queue(request: HttpRequest) -> HttpResponse:
    return _render(request, "operator/queue.html", "queue", {"snapshot": stats.queue_snapshot()})


@require_GET
@staff_member_required
def batch_detail(request: HttpRequest, batch_id: str) -> HttpResponse:
    batch = get_object_or_404(Batch.objects.select_related("owner"), pk=batch_id)
    context = {
        "batch": batch,
        "progress": stats.batch_progress(batch),
        "events": batch.events.all(),
        "chunks": BatchChunk.objects.filter(batch=batch).order_by("index"),
        "deliveries": WebhookDelivery.objects.filter(batch_id=batch.id).select_related("endpoint"),
    }
    if getattr(request, "htmx", False) and batch.is_terminal:
        # The events poll swaps #events' inside, never the element that polls: only HTTP 286
        # stops it once the batch has ended (it swaps these last events in first).
        events = TemplateResponse(request, "operator/batch.html#events", context)
        return HttpResponseStopPolling(events.rendered_content)
    return _render(request, "operator/batch.html", "events", context)


@require_GET
@staff_member_required
def batch_progress(request: HttpRequest, batch_id: str) -> HttpResponse:
    """The progress bar fragment; polling stops (HTTP 286) once the batch has ended."""
    batch = get_object_or_404(Batch, pk=batch_id)
    response = TemplateResponse(
        request, "operator/_progress.html", {"progress": stats.batch_progress(batch)}
    )
    if batch.is_terminal:
        return HttpResponseStopPolling(response.rendered_content)
    return response


@dataclass(frozen=True)
class HistoryFilters:
    status: str
    model: str
    owner: str
    since: date | None
    until: date | None

    @classmethod
    def from_request(cls, request: HttpRequest) -> HistoryFilters:
        get = request.GET
        return cls(
            status=get.get("status", "") if get.get("status") in Batch.Status.values else "",
            model=get.get("model", "").strip(),
            owner=get.get("owner", "").strip(),
            since=_date(get.get("since", "")),
            until=_date(get.get("until", "")),
        )

    def apply(self, batches: QuerySet[Batch]) -> QuerySet[Batch]:
        if self.status:
            batches = batches.filter(status=self.status)
        if self.model:
            batches = batches.filter(model=self.model)
        if self.owner:
            batches = batches.filter(owner__username=self.owner)
        tz = timezone.get_current_timezone()
        if self.since:
            batches = batches.filter(created_at__gte=datetime.combine(self.since, time(), tz))
        if self.until:
            end = datetime.combine(self.until + timedelta(days=1), time(), tz)
            batches = batches.filter(created_at__lt=end)
        return batches


def _date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


@require_GET
@staff_member_required
def history(request: HttpRequest) -> HttpResponse:
    filters = HistoryFilters.from_request(request)
    batches = filters.apply(Batch.objects.select_related("owner")).order_by("-id")
    summary = stats.history_stats(batches)
    page = Paginator(batches, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filters": filters,
        "page": page,
        "query": query.urlencode(),
        "stats": summary,
        "chart": throughput_chart(summary.throughput),
        "statuses": Batch.Status.values,
        "models": RegisteredModel.objects.values_list("name", flat=True),
    }
    return _render(request, "operator/history.html", "results", context)


@require_GET
@staff_member_required
def workers(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    rows = [
        {"worker": w, "age": (now - w.last_heartbeat_at).total_seconds()}
        for w in Worker.objects.all()[:200]
    ]
    context = {"rows": rows, "fresh_seconds": settings.READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS}
    return _render(request, "operator/workers.html", "workers", context)


@require_GET
@staff_member_required
def models(request: HttpRequest) -> HttpResponse:
    return _render(request, "operator/models.html", "models", {"rows": stats.models_overview()})


# --- The throughput chart: inline SVG, no script, no CDN ----------------------------------------

CHART_WIDTH = 640
CHART_HEIGHT = 160
CHART_PAD = 30
CHART_TICKS = 5


@dataclass(frozen=True)
class Tick:
    x: float
    at: datetime
    anchor: str  # SVG text-anchor: the labels at either end stay inside the chart


@dataclass(frozen=True)
class Chart:
    # One polyline per run of adjacent buckets: a line across hours without chunks would draw
    # a speed nothing ran at. A lone point is only a dot.
    lines: list[str]
    dots: list[tuple[float, float, str]]
    ticks: list[Tick]
    tick_format: str  # for the `date` filter
    peak: float
    first: datetime
    last: datetime
    per: str  # what each point sums up: "hour" or "day"
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    pad: int = CHART_PAD


def throughput_chart(series: list[stats.ThroughputPoint]) -> Chart | None:
    """The series as an SVG line chart, x proportional to time from its first point to its last."""
    if not series:
        return None
    peak = max(p.tokens_per_second for p in series) or 1.0
    inner_w = CHART_WIDTH - 2 * CHART_PAD
    inner_h = CHART_HEIGHT - 2 * CHART_PAD
    first, last = series[0].at, series[-1].at
    span = last - first

    def x_at(at: datetime) -> float:
        # A single bucket has no span to spread over: it sits at the left, under its label.
        share = (at - first) / span if span else 0.0
        return round(CHART_PAD + inner_w * share, 1)

    dots = [
        (
            x_at(p.at),
            round(CHART_HEIGHT - CHART_PAD - inner_h * p.tokens_per_second / peak, 1),
            f"{p.at:%Y-%m-%d %H:%M}: {p.tokens_per_second:.1f} tokens/s, {p.requests} requests",
        )
        for p in series
    ]
    runs: list[list[tuple[float, float]]] = []
    previous: stats.ThroughputPoint | None = None
    for point, (x, y, _) in zip(series, dots, strict=True):
        if previous is None or point.at - previous.at > previous.bucket:
            runs.append([])
        runs[-1].append((x, y))
        previous = point
    if span:
        times = [first + span * i / (CHART_TICKS - 1) for i in range(CHART_TICKS)]
        anchors = ["start"] + ["middle"] * (CHART_TICKS - 2) + ["end"]
    else:
        times, anchors = [first], ["start"]
    return Chart(
        lines=[" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1],
        dots=dots,
        ticks=[Tick(x=x_at(at), at=at, anchor=a) for at, a in zip(times, anchors, strict=True)],
        tick_format="H:i" if span <= timedelta(days=1) else "m-d H:i",
        peak=peak,
        first=first,
        last=last,
        per="day" if series[0].bucket >= timedelta(days=1) else "hour",
    )
