"""JSON log lines: request ids in and out, one access line per request, the worker and vLLM."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import subprocess
import sys
import threading
from multiprocessing import Queue, Value
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task
from django_q.worker import worker
from rest_framework.test import APIClient

from batchsite.logging import log_context, log_context_current
from batchsite.middleware import request_id_new
from tests.ops.conftest import JsonLines

logger = logging.getLogger("tests.ops.task")
BASE_DIR = Path(__file__).resolve().parents[2]
# What vLLM does in its engine process: configure its logging (from VLLM_LOGGING_CONFIG_PATH),
# with no Django settings loaded, then log.
VLLM_LOGS = """
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging, init_logger

configure_logging(LoggingConfig())
init_logger("vllm.engine_check").info("engine says %s", "hello")
"""


def task_that_logs(word: str) -> str:
    logger.info("task says %s", word)
    return word


def test_every_response_carries_a_new_request_id(client: Client) -> None:
    first = client.get("/health")["X-Request-ID"]
    second = client.get("/health")["X-Request-ID"]
    assert first.startswith("req_") and second.startswith("req_")
    assert first != second


def test_request_ids_stay_unique_when_a_library_seeds_the_shared_random_generator(
    client: Client,
) -> None:
    # vLLM seeds `random` with each request's seed; hypothesis does in tests.
    random.seed(1234)
    first = client.get("/health")["X-Request-ID"]
    random.seed(1234)
    assert client.get("/health")["X-Request-ID"] != first


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a gunicorn worker is
        os.write(writer, request_id_new().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(writer)
    child_id = os.read(reader, 100).decode()
    assert child_id.startswith("req_") and child_id != request_id_new()


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


def access_lines(json_logs: JsonLines) -> list[dict[str, object]]:
    return [line for line in json_logs.lines() if line["logger"] == "batchsite.access"]


@pytest.mark.django_db
def test_each_request_is_logged_once_with_its_route_status_and_duration(
    api: APIClient, json_logs: JsonLines
) -> None:
    api.get("/v1/batches/batch_nope?limit=1", HTTP_X_REQUEST_ID="trace-access-1")

    [line] = access_lines(json_logs)
    assert line["message"] == "GET /v1/batches/batch_nope 404"
    assert line["level"] == "INFO"
    assert line["method"] == "GET"
    assert line["path"] == "/v1/batches/batch_nope"
    assert line["status"] == 404
    assert line["request_id"] == "trace-access-1"
    route = str(line["route"])
    assert route.startswith("/v1/batches/") and "batch_nope" not in route
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_probes_and_scrapes_are_logged_at_debug_only(
    client: Client, json_logs: JsonLines, caplog: pytest.LogCaptureFixture
) -> None:
    client.get("/health")
    assert access_lines(json_logs) == [], "at INFO, a probe every few seconds writes nothing"

    caplog.set_level(logging.DEBUG, logger="batchsite.access")
    client.get("/health")
    [line] = access_lines(json_logs)
    assert line["message"] == "GET /health 200"
    assert line["level"] == "DEBUG"


def test_settings_point_vllm_at_our_logging_config() -> None:
    assert settings.VLLM_LOGGING_CONFIG_PATH
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == settings.VLLM_LOGGING_CONFIG_PATH
    assert Path(settings.VLLM_LOGGING_CONFIG_PATH).is_file()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_logs_json_lines_even_where_django_is_not_set_up() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["VLLM_LOGGING_CONFIG_PATH"] = str(BASE_DIR / "batchsite" / "vllm_logging.json")
    run = subprocess.run(
        [sys.executable, "-c", VLLM_LOGS],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    said = next(line for line in lines if line["message"] == "engine says hello")
    assert said["logger"] == "vllm.engine_check"
    assert said["level"] == "INFO"
    assert "timestamp" in said
