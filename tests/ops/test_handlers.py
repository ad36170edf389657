"""Result handlers: each in its own task, a failure retried with backoff and never the batch's."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ, Schedule
from pytest_django.fixtures import Settings

from batches import handlers, services
from batches.handler_examples import results_to_postgres
from batches.models import Batch, BatchEvent

pytestmark = pytest.mark.django_db

calls: list[str] = []


def handler_that_fails(batch: Batch) -> None:
    calls.append(f"fails:{batch.id}")
    raise RuntimeError("the warehouse is down")


def handler_that_works(batch: Batch) -> None:
    calls.append(f"works:{batch.id}")


@pytest.fixture(autouse=True)
def _handlers(settings: Settings) -> None:
    calls.clear()
    settings.BATCH_RESULT_HANDLERS = [
        "tests.ops.test_handlers.handler_that_fails",
        "tests.ops.test_handlers.handler_that_works",
    ]
    settings.BATCH_HANDLER_MAX_ATTEMPTS = 3
    settings.BATCH_HANDLER_RETRY_SECONDS = 60.0


def completed_batch(owner: User, **fields: Any) -> Batch:
    return Batch.objects.create(
        owner=owner,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=Batch.Status.COMPLETED,
        completed_at=timezone.now(),
        model="tiny-chat",
        **fields,
    )


def test_dispatch_queues_one_cpu_task_per_handler(owner: User) -> None:
    batch = completed_batch(owner)
    handlers.handlers_dispatch(batch_id=batch.id)
    assert OrmQ.objects.filter(key="cpu").count() == 2


def test_a_failing_handler_is_retried_later_and_leaves_the_batch_and_the_others_alone(
    owner: User,
) -> None:
    batch = completed_batch(owner)
    for path in [
        "tests.ops.test_handlers.handler_that_fails",
        "tests.ops.test_handlers.handler_that_works",
    ]:
        handlers.handler_run(path, batch.id)

    assert calls == [f"fails:{batch.id}", f"works:{batch.id}"]
    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    [retry] = Schedule.objects.filter(func="batches.handlers.handler_run")
    assert retry.cluster == "cpu"
    wait = (retry.next_run - timezone.now()).total_seconds()
    assert 25 <= wait <= 61, "base 60 s with equal jitter: 30 to 60 s"
    assert "handler_that_fails" in retry.args and "2" in retry.args
    kinds = list(BatchEvent.objects.filter(batch=batch).values_list("kind", flat=True))
    assert kinds == ["handler_failed", "handler_done"]


def test_a_handler_that_keeps_failing_is_given_up_after_the_last_attempt(owner: User) -> None:
    batch = completed_batch(owner)
    handlers.handler_run("tests.ops.test_handlers.handler_that_fails", batch.id, 3)
    assert not Schedule.objects.filter(func="batches.handlers.handler_run").exists()
    event = BatchEvent.objects.get(batch=batch)
    assert event.data["final"] is True
    assert "given up" in event.message


def test_a_handler_that_cannot_be_imported_is_a_failure_like_any_other(owner: User) -> None:
    batch = completed_batch(owner)
    assert handlers.handler_run("no.such.handler", batch.id) is False
    assert Schedule.objects.filter(func="batches.handlers.handler_run").count() == 1


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    for attempt, step in [(1, 10), (2, 20), (3, 40), (8, 100)]:
        delay = handlers.backoff_delay(attempt=attempt, base_seconds=10, max_seconds=100)
        assert step / 2 <= delay <= step


def test_batch_results_streams_the_output_then_the_error_lines(owner: User) -> None:
    def stored(lines: list[dict[str, Any]]) -> Any:
        content = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        return services.file_create_generated(
            owner=owner, purpose="batch_output", filename="x.jsonl", content=content
        )

    ok = {"id": "r1", "custom_id": "a", "response": {"status_code": 200, "body": {}}, "error": None}
    bad = {"id": "r2", "custom_id": "b", "response": None, "error": {"code": "x", "message": "y"}}
    batch = completed_batch(owner, output_file=stored([ok]), error_file=stored([bad]))
    assert [line["custom_id"] for line in handlers.batch_results(batch)] == ["a", "b"]


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the example handler writes to PostgreSQL (run with DATABASE_URL=postgres://…)",
)
def test_the_example_handler_upserts_results_into_a_postgresql_table(owner: User) -> None:
    def stored(lines: list[dict[str, Any]]) -> Any:
        content = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        return services.file_create_generated(
            owner=owner, purpose="batch_output", filename="x.jsonl", content=content
        )

    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    output = [
        {"id": f"r{i}", "custom_id": f"c{i}", "response": {"status_code": 200, "body": body}}
        | {"error": None}
        for i in range(1_200)
    ]
    error = {"code": "invalid_request", "message": "too long"}
    errors = [{"id": "rx", "custom_id": "bad", "response": None, "error": error}]
    batch = completed_batch(owner, output_file=stored(output), error_file=stored(errors))

    assert results_to_postgres(batch) == 1_201
    assert results_to_postgres(batch) == 1_201  # a retried run leaves one row per request

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(error), "
            "max(response->'choices'->0->'message'->>'content') "
            "FROM batch_results WHERE batch_id = %s",
            [batch.id],
        )
        assert cursor.fetchone() == (1_201, 1, "hi")
