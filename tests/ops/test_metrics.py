"""/metrics: the web process's counters and the workers' figures read from the database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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

from batches import webhooks
from batches.models import Batch, WebhookDelivery, WebhookEndpoint
from batchsite.metrics import _route_pattern
from inference.models import BatchChunk, Worker
from tests.ops.conftest import Receiver

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]
DASHBOARD = BASE_DIR / "batchsite" / "grafana_dashboard.json"
# What one gunicorn worker does: count requests with the web process's own counter.
COUNT_REQUESTS = """
import sys
from batchsite.metrics import HTTP_REQUESTS
HTTP_REQUESTS.labels("/v1/batches", "GET", "200").inc(int(sys.argv[1]))
"""


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
    assert detail == ["/v1/batches/{batch_id}"]
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


def test_metrics_sum_the_counts_of_every_web_process(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers of one gunicorn, as batchsite/gunicorn.py sets them up: a shared directory.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in ("3", "4"):
        subprocess.run(
            [sys.executable, "-c", COUNT_REQUESTS, count], env=env, cwd=BASE_DIR, check=True
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    text = client.get("/metrics").content.decode()
    samples = scrape(client)

    assert (
        value(
            samples,
            "batchserver_http_requests_total",
            route="/v1/batches",
            method="GET",
            status="200",
        )
        == 7
    )
    assert text.count("# TYPE batchserver_database_up gauge") == 1
    assert text.count("# TYPE batchserver_batches gauge") == 1


def test_webhook_attempts_never_go_down_as_a_delivery_moves_on(
    client: Client, owner: User, receiver: Receiver, settings: Settings
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True  # the receiver listens on 127.0.0.1
    endpoint = WebhookEndpoint.objects.create(
        owner=owner, url=receiver.url, event_types=["batch.completed"]
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        batch_id="batch_gone",
        event_id="evt_metrics",
        event_type="batch.completed",
        payload=b"{}",
    )
    receiver.statuses = [503]

    seen = []
    for expected_status in (WebhookDelivery.Status.RETRYING, WebhookDelivery.Status.DELIVERED):
        assert webhooks.webhook_deliver(delivery.pk) == expected_status
        samples = scrape(client)
        seen.append(
            {
                outcome: value(
                    samples, "batchserver_webhook_delivery_attempts_total", outcome=outcome
                )
                for outcome in ("delivered", "error")
            }
        )

    assert seen == [{"delivered": 0, "error": 1}, {"delivered": 1, "error": 1}]


@pytest.mark.parametrize(
    ("route", "label"),
    [
        ("v1/^batches/(?P<batch_id>[^/.]+)$", "/v1/batches/{batch_id}"),
        ("v1/^batches/(?P<batch_id>[^/.]+)/cancel$", "/v1/batches/{batch_id}/cancel"),
        ("v1/files/<str:file_id>/content", "/v1/files/{file_id}/content"),
        ("operator/batches/<batch_id>/", "/operator/batches/{batch_id}/"),
        ("health", "/health"),
    ],
)
def test_route_labels_read_like_the_api_reference(route: str, label: str) -> None:
    assert _route_pattern(route) == label
