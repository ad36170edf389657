"""/metrics: the web process's counters and the workers' figures read from the database."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from batches.models import Batch
from inference.models import BatchChunk, Worker

pytestmark = pytest.mark.django_db

DASHBOARD = Path(__file__).resolve().parents[2] / "batchsite" / "grafana_dashboard.json"


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def exposed_names(client: Client) -> set[str]:
    text = client.get("/metrics").content.decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M)) | {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }


def test_it_exposes_every_documented_metric(client: Client) -> None:
    client.get("/health")
    names = exposed_names(client)
    for name in [
        "batchserver_http_requests_total",
        "batchserver_http_request_duration_seconds_bucket",
        "batchserver_upload_bytes_total",
        "batchserver_database_up",
        "batchserver_batches",
        "batchserver_queue_batches",
        "batchserver_queue_requests",
        "batchserver_requests_processed_total",
        "batchserver_tokens_processed_total",
        "batchserver_engine_seconds_total",
        "batchserver_chunk_duration_seconds",
        "batchserver_worker_heartbeat_age_seconds",
        "batchserver_worker_throughput_tokens_per_second",
        "batchserver_worker_model_load_seconds",
        "batchserver_worker_requests_done_total",
        "batchserver_worker_busy",
        "batchserver_workers_alive",
        "batchserver_webhook_deliveries",
        "batchserver_webhook_delivery_attempts_total",
    ]:
        assert name in names, name


def test_the_grafana_dashboard_uses_only_metrics_that_exist(client: Client) -> None:
    names = exposed_names(client)
    # Histograms and counters are queried by their sample names (_bucket, _total, _sum, _count).
    suffixes = ("_bucket", "_sum", "_count", "_total")
    known = names | {n + s for n in names for s in suffixes}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    used = {name for expr in expressions for name in re.findall(r"\bbatchserver_\w+", expr)}
    assert used, "the dashboard should chart our metrics"
    assert used <= known, sorted(used - known)


def test_http_requests_are_labelled_by_route_pattern_not_by_id(
    client: Client, api: APIClient
) -> None:
    api.get("/v1/batches/batch_does_not_exist_1")
    api.get("/v1/batches/batch_does_not_exist_2")
    samples = scrape(client)
    routes = {
        dict(labels).get("route")
        for (name, labels) in samples
        if name == "batchserver_http_requests_total"
    }
    assert not any("does_not_exist" in (route or "") for route in routes)
    detail = [r for r in routes if r and r.startswith("/v1/batches/") and "cancel" not in r]
    assert len(detail) == 1
    assert (
        value(
            samples, "batchserver_http_requests_total", route=detail[0], method="GET", status="404"
        )
        >= 2
    )


def test_uploads_count_their_bytes(client: Client, api: APIClient) -> None:
    before = value(scrape(client), "batchserver_upload_bytes_total", purpose="batch")
    upload = SimpleUploadedFile("in.jsonl", b"x" * 1234, content_type="application/jsonl")
    assert api.post("/v1/files", {"file": upload, "purpose": "batch"}).status_code == 200
    after = value(scrape(client), "batchserver_upload_bytes_total", purpose="batch")
    assert after - before == 1234


def test_worker_side_metrics_move_as_the_worker_records_its_work(
    client: Client, owner: User
) -> None:
    now = timezone.now()
    batch = Batch.objects.create(
        owner=owner,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=Batch.Status.IN_PROGRESS,
        model="tiny-chat",
        request_total=10,
        lease_owner="gpu-1",
        lease_expires_at=now + timedelta(minutes=2),
    )
    worker = Worker.objects.create(
        name="gpu-1",
        host="h1",
        pid=7,
        loaded_model="tiny-chat",
        model_load_seconds=31.5,
        current_batch_id=batch.id,
    )
    before = scrape(client)
    assert value(before, "batchserver_queue_requests", model="tiny-chat") == 10
    assert value(before, "batchserver_queue_batches", state="running") == 1
    assert (
        value(
            before,
            "batchserver_worker_model_load_seconds",
            worker="gpu-1",
            host="h1",
            model="tiny-chat",
        )
        == 31.5
    )
    assert value(before, "batchserver_workers_alive") == 1

    BatchChunk.objects.create(
        batch=batch,
        index=0,
        start_line=0,
        end_line=5,
        start_offset=0,
        end_offset=500,
        completed=4,
        failed=1,
        input_tokens=50,
        output_tokens=160,
        seconds=2.0,
        worker="gpu-1",
    )
    Batch.objects.filter(pk=batch.pk).update(request_completed=4, request_failed=1)
    Worker.objects.filter(pk=worker.pk).update(throughput=80.0, requests_done=5)
    after = scrape(client)

    assert (
        value(after, "batchserver_requests_processed_total", model="tiny-chat", outcome="completed")
        == 4
    )
    assert (
        value(after, "batchserver_requests_processed_total", model="tiny-chat", outcome="failed")
        == 1
    )
    assert (
        value(after, "batchserver_tokens_processed_total", model="tiny-chat", kind="output") == 160
    )
    assert value(after, "batchserver_chunk_duration_seconds_count", model="tiny-chat") == 1
    assert (
        value(after, "batchserver_chunk_duration_seconds_bucket", model="tiny-chat", le="5.0") == 1
    )
    assert (
        value(after, "batchserver_chunk_duration_seconds_bucket", model="tiny-chat", le="1.0") == 0
    )
    assert value(after, "batchserver_queue_requests", model="tiny-chat") == 5
    assert (
        value(
            after,
            "batchserver_worker_throughput_tokens_per_second",
            worker="gpu-1",
            host="h1",
            model="tiny-chat",
        )
        == 80.0
    )
    assert value(after, "batchserver_worker_requests_done_total", worker="gpu-1", host="h1") == 5

    Worker.objects.filter(pk=worker.pk).update(last_heartbeat_at=now - timedelta(minutes=5))
    stale = scrape(client)
    assert value(stale, "batchserver_workers_alive") == 0
    assert (
        value(stale, "batchserver_worker_heartbeat_age_seconds", worker="gpu-1", host="h1") >= 299
    )


def test_metrics_ask_for_the_token_when_one_is_set(client: Client, settings: Settings) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
