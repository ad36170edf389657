"""The worker loop with a stand-in engine: chunks, resume, cancel, expiry, leases, finalization.

The real engine is exercised end to end in tests/e2e; here a fake one lets each edge be hit on
purpose (a crash after chunk n, a lease stolen mid-chunk, a window that closes).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule

from batches import services as batch_services
from batches.models import Batch
from batchsite.schedules import SCHEDULES
from inference import services
from inference.models import BatchChunk, RegisteredModel, Worker
from tests.conftest import chat_line

# Transactional: the worker's on-commit hooks (finalization) must really fire.
pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class FakeResult:
    custom_id: str
    ok: bool
    line: dict[str, Any]
    input_tokens: int
    output_tokens: int


class FakeEngine:
    """Answers each request with its custom_id; a body with "fail" gets an error line."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.calls: list[list[str]] = []
        self.started: list[list[str]] = []
        self.finished: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
        self.aborted: list[list[str]] = []
        self.crash_on_call: int | None = None
        self.before_call: Any = None

    # The worker starts the next chunk while this one's last requests run; here a chunk "runs"
    # when it is finished, and the chunks that were started but never finished are aborted.
    def start_chunk(
        self, endpoint: str, items: list[tuple[str, dict[str, Any]]]
    ) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        self.started.append([custom_id for custom_id, _ in items])
        return endpoint, items

    def wait_until_few_left(self, run: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
        return None

    def finish_chunk(self, run: tuple[str, list[tuple[str, dict[str, Any]]]]) -> list[FakeResult]:
        self.finished.append(run)
        return self.run_chunk(*run)

    def abort(self, run: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
        if run not in self.finished:
            self.aborted.append([custom_id for custom_id, _ in run[1]])

    def run_chunk(self, endpoint: str, items: list[tuple[str, dict[str, Any]]]) -> list[FakeResult]:
        self.calls.append([custom_id for custom_id, _ in items])
        if self.before_call is not None:
            self.before_call(len(self.calls))
        if self.crash_on_call == len(self.calls):
            raise RuntimeError("worker killed")
        results = []
        for custom_id, body in items:
            if body.get("fail"):
                line = services.error_line(custom_id, code="invalid_value", message="bad")
                results.append(FakeResult(custom_id, False, line, 0, 0))
            else:
                line = {
                    "id": f"batch_req_{custom_id}",
                    "custom_id": custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": "r",
                        "body": {"echo": custom_id},
                    },
                    "error": None,
                }
                results.append(FakeResult(custom_id, True, line, 3, 2))
        return results


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, registered_model: RegisteredModel) -> FakeEngine:
    from inference import engine as engine_module

    fake = FakeEngine(registered_model.name)
    monkeypatch.setattr(engine_module, "engine_get", lambda registered: fake)
    monkeypatch.setattr(engine_module, "engine_loaded", lambda: fake)
    # Tasks run inline: the CPU cluster's finalization, and no GPU wake-ups.
    monkeypatch.setattr(
        services, "finalize_enqueue", lambda batch_id: services.batch_finalize(batch_id=batch_id)
    )
    monkeypatch.setattr(services, "workers_wake", lambda: None)
    return fake


@pytest.fixture
def worker(db: None) -> services.WorkerHandle:
    Worker.objects.create(name="test:1", host="test", pid=1)
    return services.WorkerHandle("test:1")


def make_batch(owner: User, lines: list[dict[str, Any]], **fields: Any) -> Batch:
    content = "\n".join(json.dumps(line) for line in lines).encode()
    upload = SimpleUploadedFile("in.jsonl", content)
    file = batch_services.file_create(owner=owner, upload=upload, purpose="batch")
    batch = Batch.objects.create(
        owner=owner,
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        status=Batch.Status.IN_PROGRESS,
        model="tiny-chat",
        request_total=len(lines),
        in_progress_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=24),
        **fields,
    )
    return batch


def read_lines(file: Any) -> list[dict[str, Any]]:
    if file is None:
        return []
    with file.content.open("rb") as stream:
        return [json.loads(line) for line in io.BytesIO(stream.read()).read().splitlines()]


@override_settings(BATCH_CHUNK_SIZE=3)
def test_it_runs_a_batch_in_chunks_and_assembles_output_in_input_order(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    lines = [chat_line(f"r{i}") for i in range(10)]
    lines[4]["body"]["fail"] = True
    batch = make_batch(owner, lines)

    assert services.batches_run(worker=worker, budget_seconds=60) == 1

    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    assert [len(call) for call in engine.calls] == [3, 3, 3, 1]
    assert engine.started == engine.calls and engine.aborted == []
    assert (batch.request_completed, batch.request_failed, batch.request_total) == (9, 1, 10)
    assert (batch.input_tokens, batch.output_tokens) == (27, 18)
    assert batch.completed_at is not None and batch.finalizing_at is not None
    output = read_lines(batch.output_file)
    errors = read_lines(batch.error_file)
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(10) if i != 4]
    assert [line["custom_id"] for line in errors] == ["r4"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["error"]["code"] == "invalid_value"
    assert batch.lease_owner == "" and batch.lease_expires_at is None


@override_settings(BATCH_CHUNK_SIZE=4)
def test_a_crashed_run_resumes_after_the_last_recorded_chunk(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])
    engine.crash_on_call = 2

    with pytest.raises(RuntimeError):
        services.batches_run(worker=worker, budget_seconds=60)
    batch.refresh_from_db()
    assert batch.request_completed == 4
    assert BatchChunk.objects.filter(batch=batch).count() == 1

    engine.crash_on_call = None
    services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    ids = [line["custom_id"] for line in read_lines(batch.output_file)]
    assert ids == [f"r{i}" for i in range(10)]
    # The crashed chunk ran again; the recorded one did not.
    assert engine.calls[2] == ["r4", "r5", "r6", "r7"]
    assert ["r0", "r1", "r2", "r3"] not in engine.calls[1:]


def test_blank_lines_and_a_byte_order_mark_keep_line_numbers_and_resume_offsets(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    raw = (
        b"\xef\xbb\xbf"
        + json.dumps(chat_line("a")).encode()
        + b"\r\n\r\n"
        + json.dumps(chat_line("b")).encode()
        + b"\n"
    )
    file = batch_services.file_create(
        owner=owner, upload=SimpleUploadedFile("in.jsonl", raw), purpose="batch"
    )
    batch = make_batch(owner, [chat_line("x")])
    Batch.objects.filter(pk=batch.pk).update(input_file_id=file.id, request_total=2)
    with override_settings(BATCH_CHUNK_SIZE=1):
        services.batches_run(worker=worker, budget_seconds=60)
    chunks = list(BatchChunk.objects.filter(batch=batch).order_by("index"))
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 2), (2, 4)]
    assert chunks[-1].end_offset == len(raw)


@override_settings(BATCH_CHUNK_SIZE=2)
def test_a_cancel_stops_within_one_chunk_and_keeps_finished_results(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])

    def cancel_after_first(call: int) -> None:
        if call == 2:
            batch_services.batch_cancel(batch=Batch.objects.get(pk=batch.pk))

    engine.before_call = cancel_after_first
    services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert batch.cancelling_at is not None and batch.cancelled_at is not None
    assert len(engine.calls) == 2
    # The third chunk was already in the engine (started while the second ran): it is taken out.
    assert engine.aborted == [["r4", "r5"]]
    assert [line["custom_id"] for line in read_lines(batch.output_file)] == ["r0", "r1", "r2", "r3"]
    assert batch.error_file is None


@override_settings(BATCH_CHUNK_SIZE=3)
def test_a_cancelled_batch_waits_for_its_finalization_without_being_claimed_again(
    owner: User,
    engine: FakeEngine,
    worker: services.WorkerHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The CPU cluster is slow to finalize: its task is only recorded here.
    enqueued: list[str] = []
    monkeypatch.setattr(services, "finalize_enqueue", enqueued.append)
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(10)])
    engine.before_call = lambda call: (
        batch_services.batch_cancel(batch=Batch.objects.get(pk=batch.pk)) if call == 1 else None
    )

    services.batches_run(worker=worker, budget_seconds=5)
    services.batches_run(worker=worker, budget_seconds=5)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLING
    assert batch.lease_owner == services.FINALIZATION_LEASE_OWNER
    assert enqueued == [batch.id]
    assert batch.events.filter(kind="cancelled").count() == 1
    assert not services.batches_waiting_on_dead_workers(
        worker_name=worker.name, since=timezone.now() - timedelta(minutes=1)
    )
    assert services.batch_claim_next(worker_name="other:1", loaded_model="") is None
    # The finalization lease runs out (its task was lost): the sweep enqueues it again.
    Batch.objects.filter(pk=batch.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.batches_sweep()["finalize"] == 1
    assert enqueued == [batch.id, batch.id]

    services.batch_finalize(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED and batch.lease_owner == ""


@override_settings(BATCH_CHUNK_SIZE=2)
def test_an_expired_batch_keeps_results_and_fails_the_rest_with_batch_expired(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line(f"r{i}") for i in range(5)])

    def expire_after_first(call: int) -> None:
        if call == 1:
            Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now())

    engine.before_call = expire_after_first
    services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.EXPIRED
    assert batch.expired_at is not None
    assert [line["custom_id"] for line in read_lines(batch.output_file)] == ["r0", "r1"]
    errors = read_lines(batch.error_file)
    assert [line["custom_id"] for line in errors] == ["r2", "r3", "r4"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert (batch.request_completed, batch.request_failed) == (2, 3)


def test_a_batch_whose_requests_all_failed_is_completed_without_output_file(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    lines = [chat_line(f"r{i}", fail=True) for i in range(3)]
    batch = make_batch(owner, lines)
    services.batches_run(worker=worker, budget_seconds=60)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    assert batch.output_file is None
    assert len(read_lines(batch.error_file)) == 3


def test_a_batch_whose_model_was_unregistered_fails_its_requests_not_the_worker(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line("a"), chat_line("b")])
    RegisteredModel.objects.update(enabled=False)
    services.batches_run(worker=worker, budget_seconds=60)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    assert {line["error"]["code"] for line in read_lines(batch.error_file)} == {"model_not_found"}
    assert engine.calls == []


def test_finalizing_twice_produces_one_set_of_files(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line("a")])
    services.batches_run(worker=worker, budget_seconds=60)
    batch.refresh_from_db()
    first_output = batch.output_file_id
    again = services.batch_finalize(batch_id=batch.id)
    assert again is not None and again.output_file_id == first_output
    assert batch.output_file is not None
    assert Batch.objects.get(pk=batch.pk).output_file_id == first_output


def test_output_files_honour_output_expires_after(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line("a")], output_expires_after_seconds=7200)
    services.batches_run(worker=worker, budget_seconds=60)
    batch.refresh_from_db()
    assert batch.output_file is not None and batch.output_file.expires_at is not None
    delta = batch.output_file.expires_at - batch.output_file.created_at
    assert abs(delta.total_seconds() - 7200) < 5


def test_a_live_workers_lease_is_respected_and_a_dead_workers_is_taken(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line("a")])
    looking_since = timezone.now()
    Worker.objects.create(
        name="other:2", host="other", pid=2, last_heartbeat_at=looking_since - timedelta(seconds=1)
    )
    Batch.objects.filter(pk=batch.pk).update(
        lease_owner="other:2", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    assert services.batch_claim_next(worker_name=worker.name, loaded_model="") is None
    # Its heartbeat is fresh, but it may have been killed a moment ago: worth waiting for ...
    assert services.batches_waiting_on_dead_workers(worker_name=worker.name, since=looking_since)
    # ... until it beats again: it is alive, its batch stays its own.
    Worker.objects.filter(name="other:2").update(last_heartbeat_at=timezone.now())
    assert not services.batches_waiting_on_dead_workers(
        worker_name=worker.name, since=looking_since
    )
    assert services.batch_claim_next(worker_name=worker.name, loaded_model="") is None

    Worker.objects.filter(name="other:2").update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.batches_waiting_on_dead_workers(worker_name=worker.name, since=looking_since)
    claimed = services.batch_claim_next(worker_name=worker.name, loaded_model="")
    assert claimed is not None and claimed.lease_owner == worker.name


@override_settings(WORKER_HEARTBEAT_SECONDS=0.2)
def test_a_worker_started_right_after_another_was_killed_waits_for_its_batch_and_runs_it(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    # CI caught this: the new worker looked while the killed one's last beat was still fresh,
    # found nothing to claim and stopped, and the batch waited for the sweep.
    batch = make_batch(owner, [chat_line("a"), chat_line("b")])
    Worker.objects.create(name="killed:3", host="other", pid=3, last_heartbeat_at=timezone.now())
    Batch.objects.filter(pk=batch.pk).update(
        lease_owner="killed:3", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )

    assert services.batches_run(worker=worker, budget_seconds=30) == 1

    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    assert engine.calls == [["a", "b"]]


def test_an_expired_lease_is_taken_over(owner: User, worker: services.WorkerHandle) -> None:
    batch = make_batch(owner, [chat_line("a")])
    Worker.objects.create(name="other:2", host="other", pid=2)
    Batch.objects.filter(pk=batch.pk).update(
        lease_owner="other:2", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    claimed = services.batch_claim_next(worker_name=worker.name, loaded_model="")
    assert claimed is not None and claimed.pk == batch.pk


def test_a_worker_that_lost_its_lease_records_nothing_and_leaves_no_blobs(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    from django.core.files.storage import default_storage

    batch = make_batch(owner, [chat_line("a"), chat_line("b")])
    claimed = services.batch_claim_next(worker_name=worker.name, loaded_model="")
    assert claimed is not None
    Batch.objects.filter(pk=batch.pk).update(lease_owner="thief:9")
    results = engine.run_chunk(batch.endpoint, [("a", {}), ("b", {})])
    with pytest.raises(services.LeaseLostError):
        services.chunk_record(
            batch=batch,
            plan=services.ChunkPlan(index=0, start_line=1, start_offset=0),
            end_line=3,
            end_offset=10,
            results=results,
            worker_name=worker.name,
            seconds=0.1,
        )
    assert not BatchChunk.objects.filter(batch=batch).exists()
    directory = f"batches/{batch.id}/chunks"
    assert not default_storage.exists(directory) or default_storage.listdir(directory)[1] == []


def test_the_pick_order_prefers_cancels_then_deadlines_then_the_loaded_model_then_priority() -> (
    None
):
    now = timezone.now()
    far = now + timedelta(hours=20)
    rows = [
        {"id": "b1", "status": "in_progress", "model": "m2", "priority": 0, "expires_at": far},
        {"id": "b2", "status": "in_progress", "model": "m1", "priority": 0, "expires_at": far},
        {"id": "b3", "status": "in_progress", "model": "m2", "priority": 5, "expires_at": far},
        {
            "id": "b4",
            "status": "in_progress",
            "model": "m2",
            "priority": 0,
            "expires_at": now + timedelta(minutes=30),
        },
        {"id": "b5", "status": "cancelling", "model": "m3", "priority": 0, "expires_at": far},
        {"id": "b6", "status": "in_progress", "model": "m1", "priority": 9, "expires_at": far},
    ]
    with override_settings(WORKER_DEADLINE_MARGIN_SECONDS=3600):
        order = services.batch_pick_order(rows, loaded_model="m1", now=now)
    assert order == ["b5", "b4", "b6", "b2", "b3", "b1"]


def test_the_sweep_expires_stale_validations_and_finalizes_orphaned_cancels(
    owner: User, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatched: list[str] = []
    monkeypatch.setattr(
        services, "handlers_dispatch", lambda *, batch_id: dispatched.append(batch_id)
    )
    past = timezone.now() - timedelta(seconds=1)
    stale = Batch.objects.create(
        owner=owner, input_file_id="file-x", endpoint="/v1/chat/completions", expires_at=past
    )
    cancelling = make_batch(owner, [chat_line("a")])
    Batch.objects.filter(pk=cancelling.pk).update(status=Batch.Status.CANCELLING)

    counts = services.batches_sweep()

    assert counts["expired"] == 1 and counts["finalize"] == 1
    stale.refresh_from_db()
    assert stale.status == Batch.Status.EXPIRED and stale.expired_at is not None
    assert Batch.objects.get(pk=cancelling.pk).status == Batch.Status.CANCELLED
    # Its owner hears of it like of any other end: webhooks and handlers, and the event log.
    assert sorted(dispatched) == sorted([stale.pk, cancelling.pk])
    assert stale.events.filter(kind="expired").count() == 1
    assert services.batches_sweep()["expired"] == 0


def test_the_sweep_forgets_workers_silent_for_a_day(db: None) -> None:
    now = timezone.now()
    Worker.objects.create(
        name="old:1", host="old", pid=1, last_heartbeat_at=now - timedelta(days=2)
    )
    Worker.objects.create(name="recent:2", host="recent", pid=2, last_heartbeat_at=now)

    assert services.batches_sweep()["workers_pruned"] == 1
    assert list(Worker.objects.values_list("name", flat=True)) == ["recent:2"]


def test_the_sweep_wakes_a_worker_for_a_batch_whose_worker_stopped_heartbeating(
    owner: User, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    woken: list[bool] = []
    monkeypatch.setattr(services, "workers_wake", lambda: woken.append(True))
    batch = make_batch(owner, [chat_line("a")])
    Worker.objects.create(name="alive:4", host="other", pid=4)
    Batch.objects.filter(pk=batch.pk).update(
        lease_owner="alive:4", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    assert services.batches_sweep()["wake"] == 0 and woken == []

    # Its lease has minutes to run, but its worker is gone: no need to wait for them.
    Worker.objects.filter(name="alive:4").update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.batches_sweep()["wake"] == 1 and woken == [True]


def test_a_spent_budget_releases_the_lease_for_the_next_task(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle
) -> None:
    batch = make_batch(owner, [chat_line("a")])
    assert services.batches_run(worker=worker, budget_seconds=-1) == 0
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IN_PROGRESS and batch.lease_owner == ""


def test_an_engine_that_keeps_dying_on_a_chunk_fails_the_batch_instead_of_looping(
    owner: User, engine: FakeEngine, worker: services.WorkerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import engine as engine_module

    batch = make_batch(owner, [chat_line("a"), chat_line("b")])
    monkeypatch.setattr(engine_module, "engine_release", lambda: None)

    def die(call: int) -> None:
        raise engine_module.EngineDiedError("engine process exited")

    engine.before_call = die
    services.batches_run(worker=worker, budget_seconds=60)

    batch.refresh_from_db()
    assert len(engine.calls) == services.MAX_ENGINE_DEATHS_PER_CHUNK
    assert batch.status == Batch.Status.FAILED
    assert batch.errors is not None
    assert batch.errors["data"][0]["code"] == "server_error"
    assert "crashed 3 times" in batch.errors["data"][0]["message"]


def test_a_starting_cpu_cluster_resumes_finalizations_left_by_a_killed_one(
    owner: User, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q.conf import Conf

    from inference.signals import on_worker_spawn

    batch = make_batch(owner, [chat_line("a")])
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.FINALIZING, finalizing_at=timezone.now()
    )
    monkeypatch.setattr(Conf, "CLUSTER_NAME", "cpu")

    Schedule.objects.filter(name="inference.sweep").delete()

    on_worker_spawn(sender="django_q", proc_name="Process-1")

    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    # Without its sweep nothing would ever expire: a starting CPU cluster puts it back.
    sweep = Schedule.objects.get(name="inference.sweep")
    assert (sweep.func, sweep.cluster, sweep.repeats) == ("inference.tasks.sweep", "cpu", -1)
    assert set(SCHEDULES) <= set(Schedule.objects.values_list("name", flat=True))


def test_cpu_workers_spawning_together_leave_one_row_per_schedule() -> None:
    from batchsite.schedules import schedules_ensure

    schedules_ensure()  # An earlier transactional test's flush may have removed them.
    # Two workers raced past the existence check and each created the sweep.
    sweep = Schedule.objects.get(name="inference.sweep")
    original = sweep.pk
    sweep.pk = None
    sweep.save()
    assert Schedule.objects.filter(name="inference.sweep").count() == 2

    assert schedules_ensure() == []

    assert list(Schedule.objects.filter(name="inference.sweep").values_list("pk", flat=True)) == [
        original
    ]
    assert sorted(Schedule.objects.values_list("name", flat=True)) == sorted(SCHEDULES)


def test_a_cpu_cluster_whose_recovery_fails_still_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django_q.conf import Conf

    from inference import signals

    monkeypatch.setattr(Conf, "CLUSTER_NAME", "cpu")

    def broken() -> list[str]:
        raise RuntimeError("schedule table in a state we did not foresee")

    monkeypatch.setattr(signals, "schedules_ensure", broken)
    signals.on_worker_spawn(sender="django_q", proc_name="Process-1")
    assert "recovery at start failed" in caplog.text
