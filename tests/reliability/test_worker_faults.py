"""Storage that refuses writes and a database that goes away, in the worker loop (fast, no vLLM).

A stand-in engine lets each fault hit an exact point; the same faults against real worker
processes and the real engine are in test_faults.py.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import OperationalError
from django.test import override_settings

from batches.models import Batch, BatchEvent, File
from inference import services
from inference.models import BatchChunk, Worker
from tests.conftest import chat_line
from tests.inference.test_batch_run import FakeEngine, engine, make_batch, worker

pytestmark = pytest.mark.django_db
__all__ = ["engine", "worker"]  # fixtures of the worker-loop tests, used here too


@pytest.fixture
def disk_fills_after(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Let ``n`` chunk blobs be written, then fail every further write as a full disk does."""

    def fill_after(allowed: int) -> None:
        save = FileSystemStorage.save
        written: list[str] = []

        def save_or_fail(self: FileSystemStorage, name: str | None, *args: Any, **kw: Any) -> str:
            if name and name.startswith("batches/"):
                if len(written) >= allowed:
                    raise OSError(errno.ENOSPC, "No space left on device", name)
                written.append(name)
            return save(self, name, *args, **kw)

        monkeypatch.setattr(FileSystemStorage, "save", save_or_fail)

    return fill_after


@override_settings(BATCH_CHUNK_SIZE=3)
def test_a_full_disk_fails_the_running_batch_with_the_reason_and_keeps_its_input(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    disk_fills_after: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])
    disk_fills_after(2)  # two chunks stored, the third refused

    with django_capture_on_commit_callbacks() as callbacks:
        assert services.batches_run(worker=worker, budget_seconds=60) == 1

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FAILED and batch.failed_at is not None
    assert batch.errors is not None
    (error,) = batch.errors["data"]
    assert error["code"] == "server_error" and "No space left on device" in error["message"]
    assert (batch.lease_owner, batch.lease_expires_at) == ("", None)
    assert batch.output_file is None and batch.error_file is None
    assert len(callbacks) == 1, "the result handlers (webhooks) hear of the failure"
    assert BatchEvent.objects.filter(batch=batch, kind="failed").exists()
    assert BatchChunk.objects.filter(batch=batch).count() == 2
    assert default_storage.listdir(f"batches/{batch.id}/chunks")[1] == []
    with batch_input(batch) as stream:
        assert stream.read().count(b"\n") == 9


def batch_input(batch: Batch) -> Any:
    from batches.models import File

    return File.objects.get(pk=batch.input_file_id).content.open("rb")


@override_settings(BATCH_CHUNK_SIZE=3)
def test_a_failed_batch_is_not_picked_up_again(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle, disk_fills_after: Any
) -> None:
    make_batch(owner, [chat_line(f"r{i}") for i in range(4)])
    disk_fills_after(0)

    services.batches_run(worker=worker, budget_seconds=60)
    calls = len(engine.calls)

    assert services.batches_run(worker=worker, budget_seconds=60) == 0
    assert len(engine.calls) == calls == 1


def read_ids(file: Any) -> list[str]:
    with file.content.open("rb") as stream:
        return [json.loads(line)["custom_id"] for line in stream.read().splitlines()]


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker's wait for the database, recorded (the test's own connection never drops)."""
    waits: list[int] = []
    monkeypatch.setattr(services, "database_wait", lambda: waits.append(1))
    return waits


@override_settings(BATCH_CHUNK_SIZE=3)
def test_a_database_outage_between_chunks_is_waited_out_and_the_batch_resumes(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    outage: list[int],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])
    stop_reason = services._stop_reason
    calls: list[int] = []

    def unreachable_once(batch_id: str, worker_name: str) -> str | None:
        calls.append(1)
        if len(calls) == 4:  # before the third chunk
            raise OperationalError("server closed the connection unexpectedly")
        return stop_reason(batch_id, worker_name)

    monkeypatch.setattr(services, "_stop_reason", unreachable_once)

    with django_capture_on_commit_callbacks(execute=True):
        services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert outage == [1]
    assert batch.status == Batch.Status.COMPLETED
    assert [len(call) for call in engine.calls] == [3, 3, 3, 1], "no chunk ran twice"
    assert read_ids(batch.output_file) == [f"r{i}" for i in range(10)]


@override_settings(BATCH_CHUNK_SIZE=3)
def test_a_database_outage_while_recording_a_chunk_reruns_it_and_writes_it_once(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    outage: list[int],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])
    create = BatchChunk.objects.create
    calls: list[int] = []

    def unreachable_once(**fields: Any) -> BatchChunk:
        calls.append(1)
        if len(calls) == 2:  # the second chunk's blobs are stored, its row never commits
            raise OperationalError("terminating connection due to administrator command")
        return create(**fields)

    monkeypatch.setattr(BatchChunk.objects, "create", unreachable_once)

    with django_capture_on_commit_callbacks(execute=True):
        services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert outage == [1]
    assert batch.status == Batch.Status.COMPLETED
    assert [call[0] for call in engine.calls] == ["r0", "r3", "r3", "r6", "r9"]
    assert read_ids(batch.output_file) == [f"r{i}" for i in range(10)]
    assert (batch.request_completed, batch.request_total) == (10, 10)
    assert default_storage.listdir(f"batches/{batch.id}/chunks")[1] == []


class Killed(BaseException):
    """The process died here (not an Exception: nothing may catch it)."""


def test_files_of_a_finalization_killed_midway_are_replaced_not_duplicated(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(owner, [chat_line("a"), chat_line("b", fail=True)])
    store = vars(services)["file_create_generated"]

    def store_then_die(**fields: Any) -> Any:
        store(**fields)
        raise Killed

    monkeypatch.setitem(vars(services), "file_create_generated", store_then_die)
    with pytest.raises(Killed), django_capture_on_commit_callbacks(execute=True):
        services.batches_run(worker=worker, budget_seconds=60)
    monkeypatch.setitem(vars(services), "file_create_generated", store)
    assert File.objects.filter(purpose="batch_output").count() == 1  # the dead run's output

    finalized = services.batch_finalize(batch_id=batch.id)

    assert finalized is not None and finalized.status == Batch.Status.COMPLETED
    outputs = File.objects.filter(purpose="batch_output")
    assert set(outputs) == {finalized.output_file, finalized.error_file}
    assert read_ids(finalized.output_file) == ["a"]
    assert read_ids(finalized.error_file) == ["b"]


# --- Several workers --------------------------------------------------------------------------


def test_the_lease_is_renewed_while_the_model_loads(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # The heartbeat renews the lease of the worker's current batch: a load that outlasts the
    # lease must not let another worker take the batch (and load the model once more).
    from inference import engine as engine_module

    batch = make_batch(owner, [chat_line("a")])
    current_during_load = []

    def load(registered: Any) -> FakeEngine:
        current_during_load.append(Worker.objects.get(name=worker.name).current_batch_id)
        return engine

    monkeypatch.setattr(engine_module, "engine_get", load)
    with django_capture_on_commit_callbacks(execute=True):
        services.batches_run(worker=worker, budget_seconds=60)

    assert current_during_load == [batch.id]


def test_a_worker_that_takes_a_batch_while_others_wait_wakes_another_worker(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    for name in ("first", "second"):
        make_batch(owner, [chat_line(name)])
    wakes: list[int] = []
    monkeypatch.setattr(services, "workers_wake", lambda: wakes.append(1))

    with django_capture_on_commit_callbacks(execute=True):
        assert services.batches_run(worker=worker, budget_seconds=60) == 2

    assert wakes == [1], "one wake-up, when the first batch was taken and the second waited"
