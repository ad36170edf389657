"""Request ids: in and out of every response, and in every log line, web process and worker."""

from __future__ import annotations

import logging
import threading
from multiprocessing import Queue, Value

import pytest
from django.test import Client
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task
from django_q.worker import worker

from batchsite.logging import log_context, log_context_current
from tests.ops.conftest import JsonLines

logger = logging.getLogger("tests.ops.task")


def task_that_logs(word: str) -> str:
    logger.info("task says %s", word)
    return word


def test_every_response_carries_a_new_request_id(client: Client) -> None:
    first = client.get("/health")["X-Request-ID"]
    second = client.get("/health")["X-Request-ID"]
    assert first.startswith("req_") and second.startswith("req_")
    assert first != second


def test_it_answers_with_the_clients_own_request_id(client: Client) -> None:
    response = client.get("/health", HTTP_X_REQUEST_ID="client-trace-42")
    assert response["X-Request-ID"] == "client-trace-42"


def test_it_replaces_a_request_id_that_could_forge_log_lines(client: Client) -> None:
    response = client.get("/health", HTTP_X_REQUEST_ID='x"}\n{"level": "ERROR')
    assert response["X-Request-ID"].startswith("req_")


@pytest.mark.django_db
def test_log_lines_of_a_request_are_json_with_its_request_id(
    client: Client, json_logs: JsonLines
) -> None:
    # /ready logs a warning inside the view; the 401 is logged by Django after the middleware.
    client.get("/ready", HTTP_X_REQUEST_ID="trace-ready-1")
    client.get("/v1/batches", HTTP_X_REQUEST_ID="trace-unauth-2")

    lines = json_logs.lines()
    not_ready = next(line for line in lines if line["message"].startswith("not ready"))
    assert not_ready["request_id"] == "trace-ready-1"
    assert not_ready["level"] == "WARNING"
    assert not_ready["logger"] == "batchsite.health"
    assert "timestamp" in not_ready
    unauthorized = next(line for line in lines if line["message"].startswith("Unauthorized"))
    assert unauthorized["request_id"] == "trace-unauth-2"
    assert log_context_current() == {}, "the ids must not outlive the request"


@pytest.mark.django_db(transaction=True)
def test_a_task_logs_with_the_ids_of_the_code_that_queued_it(json_logs: JsonLines) -> None:
    with log_context(request_id="req_from_web", batch_id="batch_abc"):
        async_task("tests.ops.test_logging.task_that_logs", "hello", cluster="cpu")
    package = OrmQ.objects.get(key="cpu").payload

    def run_like_the_cluster() -> None:
        # A new thread starts with empty context variables, as a worker process does.
        assert log_context_current() == {}
        tasks: Queue[object] = Queue()
        results: Queue[object] = Queue()
        tasks.put(SignedPackage.loads(package))
        tasks.put("STOP")
        worker(tasks, results, Value("f", -1))
        assert results.get(timeout=10)["success"] is True  # type: ignore[index]
        assert log_context_current() == {}, "the ids end with the task"

    thread = threading.Thread(target=run_like_the_cluster)
    thread.start()
    thread.join(timeout=30)

    said = next(line for line in json_logs.lines() if line["message"] == "task says hello")
    assert said["request_id"] == "req_from_web"
    assert said["batch_id"] == "batch_abc"
    assert said["logger"] == "tests.ops.task"


@pytest.mark.django_db
def test_a_synchronous_task_leaves_its_callers_ids_in_place() -> None:
    with log_context(request_id="req_caller"):
        async_task("tests.ops.test_logging.task_that_logs", "sync", sync=True)
        assert log_context_current() == {"request_id": "req_caller"}
