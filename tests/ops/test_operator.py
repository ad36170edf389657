"""Operator pages: staff only, full pages and HTMX partials, progress that stops polling."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from batches.events import batch_event_record
from batches.models import Batch
from inference.models import BatchChunk, RegisteredModel, Worker
from inference.stats import ThroughputPoint
from inference.views import CHART_PAD, CHART_WIDTH, throughput_chart

pytestmark = pytest.mark.django_db

PAGES = ["/operator/", "/operator/history", "/operator/workers", "/operator/models"]


@pytest.fixture
def operator(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def make_batch(owner: User, **fields: object) -> Batch:
    defaults: dict[str, object] = {
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-x",
        "status": Batch.Status.IN_PROGRESS,
        "model": "tiny-chat",
        "request_total": 100,
        "expires_at": timezone.now() + timedelta(hours=24),
    }
    return Batch.objects.create(owner=owner, **(defaults | fields))


def table_row(page: str, text: str) -> str:
    """The HTML of the one table row that contains `text`."""
    rows: list[str] = [row for row in re.findall(r"<tr[ >].*?</tr>", page, re.S) if text in row]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def running(owner: User) -> Batch:
    """A batch a live worker is running, 40 of 100 requests done in 2 chunks of 10 s."""
    now = timezone.now()
    Worker.objects.create(
        name="gpu-1", host="h1", pid=1, loaded_model="tiny-chat", model_load_seconds=30.0
    )
    batch = make_batch(
        owner,
        request_completed=38,
        request_failed=2,
        lease_owner="gpu-1",
        lease_expires_at=now + timedelta(minutes=2),
    )
    Worker.objects.filter(name="gpu-1").update(current_batch_id=batch.id, throughput=64.0)
    for index in range(2):
        BatchChunk.objects.create(
            batch=batch,
            index=index,
            start_line=index * 20,
            end_line=index * 20 + 20,
            start_offset=0,
            end_offset=0,
            completed=19,
            failed=1,
            output_tokens=640,
            seconds=10.0,
            worker="gpu-1",
        )
    return batch


@pytest.mark.parametrize("page", PAGES)
def test_operator_pages_send_anonymous_visitors_to_log_in(client: Client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("page", PAGES)
def test_operator_pages_are_closed_to_non_staff(owner: User, page: str) -> None:
    client = Client()
    client.force_login(owner)
    assert client.get(page).status_code == 302


@pytest.mark.parametrize("page", PAGES)
def test_operator_pages_render_whole_and_as_htmx_partials(operator: Client, page: str) -> None:
    full = operator.get(page)
    assert full.status_code == 200
    assert b"<html" in full.content
    assert b"htmx" in full.content
    partial = operator.get(page, HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    assert b"<html" not in partial.content


def test_the_queue_shows_the_running_batch_with_speed_and_eta(
    operator: Client, running: Batch
) -> None:
    page = operator.get("/operator/").content.decode()
    assert running.id in page
    assert "40 / 100 requests (40%)" in page
    assert "64.0 tokens/s" in page
    # 40 requests in 20 s: 2 requests/s, 60 left -> 30 s.
    assert "ETA 30 s" in page
    assert 'hx-trigger="every 2s"' in page


def test_waiting_batches_are_listed_in_the_workers_order_with_an_estimated_start(
    operator: Client, owner: User, running: Batch
) -> None:
    low = make_batch(owner, priority=0, request_total=20)
    high = make_batch(owner, priority=5, request_total=10)
    other_model = make_batch(owner, priority=9, model="other-model", request_total=10)
    behind_it = make_batch(owner, priority=1, model="other-model", request_total=10)
    page = operator.get("/operator/", HTTP_HX_REQUEST="true").content.decode()
    # The loaded model first (no swap), higher priority first within it.
    assert page.index(high.id) < page.index(low.id) < page.index(other_model.id)
    assert page.index(other_model.id) < page.index(behind_it.id)
    # The running batch needs 30 s; `high` starts then, `low` 5 s later (10 requests at 2/s),
    # `other_model` after low's 10 s; other-model has never run, so what follows is unknown.
    assert "in 30 s" in page and "in 35 s" in page and "in 45 s" in page
    assert page.count("unknown") == 1


def test_a_waiting_batch_shows_only_the_requests_it_has_left(operator: Client, owner: User) -> None:
    # Its worker died 35 requests in: the batch waits again with 65 to go, not 100.
    partly_run = make_batch(owner, request_total=100, request_completed=30, request_failed=5)
    page = operator.get("/operator/", HTTP_HX_REQUEST="true").content.decode()
    row = table_row(page, partly_run.id)
    assert '<td class="num">65</td>' in row
    assert '<td class="num">100</td>' not in row


def test_progress_polls_while_running_and_stops_once_the_batch_ends(
    operator: Client, running: Batch
) -> None:
    url = f"/operator/batches/{running.id}/progress"
    live = operator.get(url, HTTP_HX_REQUEST="true")
    assert live.status_code == 200
    assert b'hx-trigger="every 2s"' in live.content

    Batch.objects.filter(pk=running.pk).update(
        status=Batch.Status.COMPLETED, request_completed=98, completed_at=timezone.now()
    )
    ended = operator.get(url, HTTP_HX_REQUEST="true")
    assert ended.status_code == 286
    assert b"hx-trigger" not in ended.content
    assert b"completed" in ended.content


def test_the_batch_page_tells_the_batchs_story(operator: Client, running: Batch) -> None:
    batch_event_record(batch_id=running.id, kind="started", message="Worker gpu-1 took the batch.")
    batch_event_record(
        batch_id=running.id, kind="chunk_done", message="Chunk 0 done: 64 tokens/s.", index=0
    )
    page = operator.get(f"/operator/batches/{running.id}").content.decode()
    assert page.index("Worker gpu-1 took the batch.") < page.index("Chunk 0 done: 64 tokens/s.")
    events = operator.get(f"/operator/batches/{running.id}", HTTP_HX_REQUEST="true")
    assert b"Chunk 0 done" in events.content and b"<html" not in events.content


def test_the_event_log_shows_a_chunks_throughput_from_its_data(
    operator: Client, running: Batch
) -> None:
    # The worker's message need not carry the speed; the event's data always does.
    batch_event_record(
        batch_id=running.id,
        kind="chunk_done",
        message="chunk 3 done: 200 requests in 1.23s",
        index=3,
        requests=200,
        failed=0,
        seconds=1.234,
        tokens_per_second=5187.5,
    )
    batch_event_record(
        batch_id=running.id, kind="validated", message="validated: 100 requests", requests=100
    )
    events = operator.get(f"/operator/batches/{running.id}", HTTP_HX_REQUEST="true")
    page = events.content.decode()
    chunk_row = table_row(page, "chunk 3 done")
    assert "chunk 3 done: 200 requests in 1.23s" in chunk_row
    assert (
        '<td class="num">200</td><td class="num">1.23</td><td class="num">5187.5</td>' in chunk_row
    )
    assert "Tokens/s</th>" in page
    # Other events' data is theirs: no throughput cells are made up from it.
    validated_row = table_row(page, "validated: 100 requests")
    assert '<td class="num">' not in validated_row


def test_the_throughput_chart_places_points_in_proportion_to_their_time() -> None:
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    series = [
        ThroughputPoint(at=start, tokens_per_second=10.0, requests=1),
        ThroughputPoint(at=start + timedelta(hours=1), tokens_per_second=20.0, requests=1),
        ThroughputPoint(at=start + timedelta(minutes=61), tokens_per_second=40.0, requests=1),
    ]
    chart = throughput_chart(series)
    assert chart is not None
    xs = [x for x, _, _ in chart.dots]
    inner = CHART_WIDTH - 2 * CHART_PAD
    assert xs[0] == CHART_PAD and xs[2] == CHART_WIDTH - CHART_PAD
    assert xs[1] == pytest.approx(CHART_PAD + inner * 60 / 61, abs=0.1)
    # An hour takes sixty times the room of a minute.
    assert (xs[1] - xs[0]) / (xs[2] - xs[1]) == pytest.approx(60, rel=0.02)
    # The axis is labelled with times spread evenly over the same window.
    assert [t.at for t in chart.ticks] == [start + timedelta(seconds=915 * i) for i in range(5)]
    assert [t.x for t in chart.ticks] == [CHART_PAD + inner * i / 4 for i in range(5)]


def test_the_history_chart_keeps_empty_hours_on_its_time_axis(
    operator: Client, owner: User
) -> None:
    done = make_batch(owner, status=Batch.Status.COMPLETED, request_completed=100)
    nine = timezone.now().replace(hour=9, minute=10, second=0, microsecond=0)
    for index, at in enumerate((nine, nine + timedelta(hours=1), nine + timedelta(hours=4))):
        BatchChunk.objects.create(
            batch=done,
            index=index,
            start_line=index,
            end_line=index + 1,
            start_offset=0,
            end_offset=0,
            completed=1,
            output_tokens=100,
            seconds=1.0,
            created_at=at,
        )
    page = operator.get("/operator/history").content.decode()
    # 09:00 to 13:00: the points sit at 0, 1/4 and 4/4 of the axis, which reads 09:00 ... 13:00.
    cxs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', page)]
    assert cxs == [
        CHART_PAD,
        CHART_PAD + (CHART_WIDTH - 2 * CHART_PAD) / 4,
        CHART_WIDTH - CHART_PAD,
    ]
    labels = re.findall(r'<g class="tick">.*?>(\d\d:\d\d)</text></g>', page)
    assert labels == ["09:00", "10:00", "11:00", "12:00", "13:00"]
    # The line joins the two adjacent hours only: nothing ran from 11:00 to 13:00.
    assert page.count("<polyline") == 1


def test_history_filters_and_counts(operator: Client, owner: User, other_owner: User) -> None:
    done = make_batch(owner, status=Batch.Status.COMPLETED, request_completed=100)
    make_batch(owner, status=Batch.Status.FAILED)
    theirs = make_batch(other_owner, status=Batch.Status.COMPLETED, request_completed=100)
    BatchChunk.objects.create(
        batch=done,
        index=0,
        start_line=0,
        end_line=100,
        start_offset=0,
        end_offset=0,
        completed=100,
        output_tokens=5000,
        seconds=50.0,
    )

    page = operator.get("/operator/history").content.decode()
    assert "67%" in page  # 2 of 3 ended batches completed
    assert "100.0" in page  # tiny-chat: 5000 tokens in 50 s
    assert "<svg" in page and "<circle" in page

    mine = operator.get(
        "/operator/history", {"status": "completed", "owner": "owner"}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert done.id in mine and theirs.id not in mine
    assert "<html" not in mine
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    later = operator.get("/operator/history", {"since": tomorrow}).content.decode()
    assert done.id not in later and "No batch matches." in later


def test_workers_and_models_pages_show_heartbeats_and_speeds(
    operator: Client, running: Batch
) -> None:
    RegisteredModel.objects.create(name="tiny-chat", source="/models/tiny")
    Worker.objects.create(
        name="gpu-old", host="h2", pid=2, last_heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    workers = operator.get("/operator/workers").content.decode()
    assert "gpu-1" in workers and running.id in workers
    assert 'class="stale"' in workers  # gpu-old's heartbeat is an hour old
    models = operator.get("/operator/models").content.decode()
    assert "tiny-chat" in models and "64.0" in models


def test_the_batch_pages_event_poll_stops_once_the_batch_ends(
    operator: Client, running: Batch
) -> None:
    # The poll swaps the inside of #events, never the polling element, so only a 286 stops it.
    url = f"/operator/batches/{running.id}"
    assert operator.get(url, HTTP_HX_REQUEST="true").status_code == 200

    Batch.objects.filter(pk=running.pk).update(
        status=Batch.Status.CANCELLED, cancelled_at=timezone.now()
    )
    batch_event_record(batch_id=running.id, kind="finalized", message="finalized as cancelled")
    ended = operator.get(url, HTTP_HX_REQUEST="true")
    assert ended.status_code == 286
    assert b"finalized as cancelled" in ended.content and b"<html" not in ended.content
    full = operator.get(url).content.decode()
    assert full.count('hx-trigger="every') == 0  # no poll starts on an ended batch's page


def test_the_progress_fragment_keeps_clear_of_the_sites_progress_class(
    operator: Client, running: Batch
) -> None:
    # app.css styles `.progress` as the curation pages' 8 px bar with overflow hidden: on the
    # wrapper, it hid the status, counts, speed and ETA under the operator's bar.
    for url in ("/operator/", f"/operator/batches/{running.id}/progress"):
        page = operator.get(url).content.decode()
        assert f'class="run-progress" id="progress-{running.id}"' in page
        assert 'class="progress"' not in page
