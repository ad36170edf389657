"""/health answers while the process lives; /ready names each failed check."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from django_q.models import OrmQ

from batchsite import health
from inference.models import Worker

pytestmark = pytest.mark.django_db


def worker_seen(seconds_ago: float) -> Worker:
    return Worker.objects.create(
        name=f"gpu-{seconds_ago}",
        host="h",
        pid=1,
        last_heartbeat_at=timezone.now() - timedelta(seconds=seconds_ago),
    )


def test_health_answers_without_touching_anything(client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_when_database_queue_and_a_worker_are_fine(client: Client) -> None:
    worker_seen(2)
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["failed"] == []


def test_not_ready_without_any_worker(client: Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["worker"]
    assert "ever sent a heartbeat" in response.json()["checks"]["worker"]["error"]


def test_not_ready_when_the_last_heartbeat_is_stale(client: Client) -> None:
    worker_seen(600)
    body = client.get("/ready").json()
    assert body["failed"] == ["worker"]
    assert "600s old" in body["checks"]["worker"]["error"]


def test_not_ready_when_a_cpu_task_waits_too_long(client: Client) -> None:
    worker_seen(1)
    OrmQ.objects.create(key="cpu", payload="x", lock=timezone.now() - timedelta(minutes=30))
    body = client.get("/ready").json()
    assert body["failed"] == ["queue"]
    assert "qcluster" in body["checks"]["queue"]["error"]


def test_not_ready_when_the_database_is_unreachable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    class DownConnection:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    worker_seen(1)
    monkeypatch.setattr(health, "connection", DownConnection())
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["database"]
    assert "connection refused" in response.json()["checks"]["database"]["error"]


def test_not_ready_when_the_broker_cannot_be_read(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q.brokers.orm import ORM

    def broken(self: Any) -> int:
        raise OperationalError("no such table: django_q_ormq")

    worker_seen(1)
    monkeypatch.setattr(ORM, "queue_size", broken)
    body = client.get("/ready").json()
    assert body["failed"] == ["queue"]
    assert "django_q_ormq" in body["checks"]["queue"]["error"]


def test_sentry_stays_off_without_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert health.sentry_init() is False


def test_sentry_starts_when_a_dsn_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentry_sdk

    started: dict[str, Any] = {}
    monkeypatch.setenv("SENTRY_DSN", "https://key@sentry.example.com/1")
    monkeypatch.setattr(sentry_sdk, "init", lambda **kwargs: started.update(kwargs))
    assert health.sentry_init() is True
    assert started["dsn"] == "https://key@sentry.example.com/1"
    assert started["send_default_pii"] is False
