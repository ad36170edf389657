"""Faults injected into real workers (django-q2 clusters, vLLM with the tiny model).

Each test drives batches through the openai SDK against the live server and checks OpenAI's
promise at the end: the batch ends in a known state and every request is accounted for, once.

- SIGKILL of the GPU worker in the middle of a chunk and between two chunks, and of the CPU
  cluster while it finalizes, all on one 5,000-request batch;
- the database stopped for a few seconds under a running batch (PostgreSQL only);
- storage that refuses every write of the worker (a full disk);
- two and three GPU workers sharing one queue of ten batches.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule
from openai import OpenAI

from batches import services as batch_services
from batches.models import Batch, File
from inference import services
from inference.models import BatchChunk, Worker
from tests.e2e.conftest import Cluster, cluster_env, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.django_db(transaction=True)]
__all__ = ["cluster_env"]  # the e2e fixture, used here too

MODEL = "tiny-faults"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class FaultyCluster(Cluster):
    """A qcluster started through tests.reliability.faulty_qcluster (a fault point, or none)."""

    command = ("-m", "tests.reliability.faulty_qcluster")


@pytest.fixture
def start(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., FaultyCluster]]:
    started: list[FaultyCluster] = []

    def start_cluster(name: str, **extra_env: str) -> FaultyCluster:
        log = tmp_path / f"{name}-{len(started)}.log"
        cluster = FaultyCluster(name, {**cluster_env, **extra_env}, log)
        started.append(cluster)
        return cluster

    yield start_cluster
    for cluster in started:
        cluster.stop()


@pytest.fixture
def client(live_server: Any) -> OpenAI:
    user = User.objects.create_user("faults")
    _, raw_key = batch_services.api_key_create(owner=user, name="faults")
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=raw_key, max_retries=0)


@pytest.fixture
def tiny_model(tiny_model_path: Path) -> str:
    services.model_register(
        name=MODEL, source=str(tiny_model_path), engine_args={"max_model_len": 256}
    )
    return MODEL


def request_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Count to {custom_id}."}],
            "max_tokens": 4,
            **body,
        },
    }


def batch_lines(prefix: str, count: int, *, failing_every: int = 0) -> list[dict[str, Any]]:
    """``count`` requests; every ``failing_every``-th asks for n above the limit (an error line)."""
    return [
        request_line(f"{prefix}{i}", n=100)
        if failing_every and i % failing_every == failing_every - 1
        else request_line(f"{prefix}{i}", seed=i)
        for i in range(count)
    ]


def submit(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def wait_terminal(client: OpenAI, batch_id: str, clusters: list[Cluster], timeout: float) -> Any:
    def ended() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in TERMINAL else None

    return wait_for(ended, timeout=timeout, what=f"{batch_id} to end", clusters=clusters)


def wait_marker(marker: Path, clusters: list[Cluster], timeout: float = 600) -> None:
    wait_for(marker.exists, timeout=timeout, what=f"fault point {marker.name}", clusters=clusters)


def read(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def assert_each_request_once(
    client: OpenAI, batch: Any, lines: list[dict[str, Any]], *, failing: int = 0
) -> None:
    """Completed, and output plus error files hold every custom_id exactly once."""
    assert batch.status == "completed", batch
    output = read(client, batch.output_file_id)
    errors = read(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in output + errors)
    assert set(seen) == {line["custom_id"] for line in lines}
    assert max(seen.values()) == 1, seen.most_common(3)
    assert len(errors) == failing
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (
        len(lines),
        len(lines) - failing,
        failing,
    )


def stored_names(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


# --- SIGKILL at three points ------------------------------------------------------------------


def test_a_5000_request_batch_survives_sigkill_mid_chunk_between_chunks_and_in_finalization(
    client: OpenAI,
    tiny_model: str,
    start: Callable[..., FaultyCluster],
    tmp_path: Path,
    cluster_env: dict[str, str],
) -> None:
    files = Path(cluster_env["BATCH_FILES_DIR"])
    markers = {name: tmp_path / f"{name}.reached" for name in ("mid", "between", "final")}
    chunking = {"BATCH_CHUNK_SIZE": "200"}
    cpu = start("cpu", FAULT_PAUSE="finalizing", FAULT_MARKER=str(markers["final"]))
    gpu = start("gpu", FAULT_PAUSE="mid_chunk:3", FAULT_MARKER=str(markers["mid"]), **chunking)
    lines = batch_lines("r", 5_000, failing_every=500)
    batch_id = submit(client, lines)

    # 1. Killed with chunk 3 computed and its output blob stored, but not recorded.
    wait_marker(markers["mid"], [cpu, gpu])
    assert sorted(BatchChunk.objects.filter(batch_id=batch_id).values_list("index", flat=True)) == [
        0,
        1,
        2,
    ]
    assert any("/000003-" in name for name in stored_names(files))
    gpu.kill()

    # 2. Killed with chunk 12 recorded and chunk 13 not started.
    gpu = start(
        "gpu", FAULT_PAUSE="after_chunk:12", FAULT_MARKER=str(markers["between"]), **chunking
    )
    wait_marker(markers["between"], [cpu, gpu])
    assert BatchChunk.objects.filter(batch_id=batch_id).count() == 13
    gpu.kill()

    # 3. The CPU cluster killed while it finalizes: the output file is stored, the batch is not
    # completed yet.
    gpu = start("gpu", **chunking)
    wait_marker(markers["final"], [cpu, gpu])
    assert Batch.objects.get(pk=batch_id).status == Batch.Status.FINALIZING
    cpu.kill()
    # The sweep re-enqueues finalizations stuck for two minutes: let those minutes pass, and
    # let the restarted cluster's scheduler run the sweep at once.
    Batch.objects.filter(pk=batch_id).update(finalizing_at=timezone.now() - timedelta(minutes=3))
    Schedule.objects.filter(name="inference.sweep").update(next_run=timezone.now())
    cpu = start("cpu")

    batch = wait_terminal(client, batch_id, [cpu, gpu], timeout=600)

    assert_each_request_once(client, batch, lines, failing=10)
    chunks = list(BatchChunk.objects.filter(batch_id=batch_id).order_by("index"))
    assert [c.index for c in chunks] == list(range(25))
    assert len({c.worker for c in chunks}) == 3, "three GPU workers each recorded chunks"
    # Nothing of the killed attempts is left: no chunk blob, no second output file.
    assert not [name for name in stored_names(files) if "/chunks/" in name]
    owned = File.objects.filter(owner__username="faults")
    assert sorted(owned.values_list("purpose", flat=True)) == [
        "batch",
        "batch_output",
        "batch_output",
    ]


# --- Storage writes fail ----------------------------------------------------------------------


def test_a_batch_whose_results_cannot_be_stored_fails_cleanly_and_stored_files_stay_readable(
    client: OpenAI,
    tiny_model: str,
    start: Callable[..., FaultyCluster],
) -> None:
    earlier = client.files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    lines = batch_lines("s", 300)
    batch_id = submit(client, lines)
    failing = {
        "BATCH_STORAGE_BACKEND": "tests.reliability.failing_storage.FailingStorage",
        "FAULT_STORAGE_FAIL": r"^batches/",
    }
    clusters: list[Cluster] = [
        start("cpu", **failing),
        start("gpu", BATCH_CHUNK_SIZE="100", **failing),
    ]

    batch = wait_terminal(client, batch_id, clusters, timeout=600)

    assert batch.status == "failed", batch
    assert batch.failed_at is not None
    (error,) = batch.errors.data
    assert error.code == "server_error"
    assert "No space left on device" in (error.message or "")
    assert batch.output_file_id is None and batch.error_file_id is None
    sent = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    assert client.files.content(batch.input_file_id).content == sent
    assert client.files.content(earlier.id).content == b'{"a": 1}\n'
    assert Batch.objects.get(pk=batch_id).lease_owner == ""


# --- The database goes away -------------------------------------------------------------------


def _postgres_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster serving the test database."""
    port = str(connection.settings_dict["PORT"] or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for row in listing.splitlines():
        version, name, cluster_port, *_ = row.split()
        if cluster_port == port:
            return version, name
    raise AssertionError(f"no local PostgreSQL cluster on port {port}:\n{listing}")


def _pg_ctl(action: str, version: str, name: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        check=True,
        capture_output=True,
    )


def _raw_get(url: str, key: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_database_outage_pauses_the_worker_and_the_api_answers_503_then_all_resumes(
    client: OpenAI,
    tiny_model: str,
    start: Callable[..., FaultyCluster],
    live_server: Any,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("stopping the database server needs PostgreSQL")
    version, name = _postgres_cluster()
    clusters: list[Cluster] = [start("cpu"), start("gpu", BATCH_CHUNK_SIZE="100")]
    lines = batch_lines("d", 3_000, failing_every=1_000)
    batch_id = submit(client, lines)
    wait_for(
        lambda: BatchChunk.objects.filter(batch_id=batch_id).count() >= 2,
        timeout=600,
        what="two chunks",
        clusters=clusters,
    )

    _pg_ctl("stop", version, name)
    try:
        answers = []
        outage_ends = time.monotonic() + 8
        while time.monotonic() < outage_ends:
            answers.append(_raw_get(f"{live_server.url}/v1/batches/{batch_id}", client.api_key))
            time.sleep(1)
        with pytest.raises(openai.InternalServerError) as from_sdk:
            client.batches.retrieve(batch_id)
    finally:
        _pg_ctl("start", version, name)
    connection.close()  # this thread's connection died with the server

    assert answers and {status for status, _ in answers} == {503}
    for _, body in answers:
        assert body["error"]["type"] == "server_error"
        assert body["error"]["code"] == "service_unavailable"
        assert body["error"]["message"]
    assert from_sdk.value.status_code == 503
    batch = wait_terminal(client, batch_id, clusters, timeout=600)
    assert_each_request_once(client, batch, lines, failing=3)
    indexes = list(BatchChunk.objects.filter(batch_id=batch_id).values_list("index", flat=True))
    assert sorted(indexes) == list(range(30))


# --- Several workers, one queue ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_share_a_queue_of_ten_batches_and_run_every_request_once(
    client: OpenAI,
    tiny_model: str,
    start: Callable[..., FaultyCluster],
    workers: int,
) -> None:
    cpu = start("cpu")
    batches = {
        submit(client, batch_lines(f"b{b}-", 200)): batch_lines(f"b{b}-", 200) for b in range(10)
    }
    # Every batch waits before any worker starts, so each worker claims one at once.
    wait_for(
        lambda: Batch.objects.filter(status="in_progress").count() == 10,
        timeout=120,
        what="ten validated batches",
        clusters=[cpu],
    )
    gpus = [start("gpu", BATCH_CHUNK_SIZE="20") for _ in range(workers)]
    clusters: list[Cluster] = [cpu, *gpus]

    ended = [wait_terminal(client, batch_id, clusters, timeout=900) for batch_id in batches]

    for batch, lines in zip(ended, batches.values(), strict=True):
        assert_each_request_once(client, batch, lines)
    chunks = BatchChunk.objects.all()
    assert sum(c.completed + c.failed for c in chunks) == 10 * 200
    assert len({c.worker for c in chunks}) == workers, "every worker took part"
    assert sum(Worker.objects.values_list("requests_done", flat=True)) == 10 * 200
    for gpu in gpus:
        assert "lease lost" not in gpu.log_path.read_text(errors="replace")
