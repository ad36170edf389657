"""Scheduling, leases and chunked execution of batches on the GPU worker, and finalization.

The life of a validated batch (status ``in_progress``):

1. ``workers_wake`` puts a ``run_batches`` task on the GPU cluster's queue.
2. A GPU worker claims the most urgent runnable batch with a lease (``batch_claim_next``),
   loads its model (hot swap), and runs the input file in chunks (``batch_run``). Each chunk's
   results go to storage, then one transaction records the chunk and moves the counts. A killed
   worker loses at most the chunk in flight; whoever claims the batch next resumes after the
   last recorded chunk.
3. When the input is exhausted (or the batch is cancelled, or its window closes) the batch goes
   to the CPU cluster's ``finalize_batch``, which assembles the output and error files by
   streaming the chunk files, and ends the batch ``completed``, ``cancelled`` or ``expired``.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django_q.models import OrmQ
from django_q.tasks import async_task

from batches.events import batch_event_record
from batches.handlers import handlers_dispatch
from batches.models import Batch, File, new_batch_request_id
from batches.services import batch_transition, file_create_generated
from batchsite.logging import log_context
from inference.models import BatchChunk, RegisteredModel, Worker

if TYPE_CHECKING:
    from inference.engine import ChunkRun, Engine

logger = logging.getLogger(__name__)

GPU_CLUSTER = "gpu"
CPU_CLUSTER = "cpu"


# --- Waking workers ---------------------------------------------------------------------------


def workers_wake() -> None:
    """Make sure a GPU task is waiting to pick up runnable batches.

    One pending task is enough: a running task keeps claiming batches until none is left, so
    we only enqueue when nothing is queued and not yet taken (lock in the past = not taken).
    """
    pending = OrmQ.objects.filter(key=GPU_CLUSTER, lock__lte=timezone.now()).exists()
    if not pending:
        async_task("inference.tasks.run_batches", cluster=GPU_CLUSTER, group="gpu")


def finalize_enqueue(batch_id: str) -> None:
    async_task("inference.tasks.finalize_batch", batch_id, cluster=CPU_CLUSTER, group="finalize")


# --- Claiming ---------------------------------------------------------------------------------


def _stale_before(now: datetime) -> datetime:
    # A worker that missed three heartbeats is gone (killed, or its machine is): its lease can
    # be taken before it expires. Chunk records are unique, so even a wrong guess here never
    # writes a request twice.
    return now - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS + 2)


# The lease owner of a cancelled or expired batch that a worker has handed to its finalization
# (a CPU task): no worker claims it again until that lease runs out, when the sweep enqueues the
# finalization once more. Without it, workers re-claimed a cancelling batch (cancels come first)
# and enqueued its finalization over and over until the CPU cluster got to it.
FINALIZATION_LEASE_OWNER = "finalization"


def _claimable(worker_name: str, now: datetime) -> Q:
    live_owner = Worker.objects.filter(
        name=OuterRef("lease_owner"), last_heartbeat_at__gte=_stale_before(now)
    )
    return (
        Q(lease_owner="")
        | Q(lease_owner=worker_name)
        | Q(lease_expires_at__lt=now)
        | (Q(~Exists(live_owner)) & ~Q(lease_owner=FINALIZATION_LEASE_OWNER))
    )


def batch_pick_order(
    candidates: Sequence[Mapping[str, Any]], *, loaded_model: str, now: datetime
) -> list[str]:
    """Ids in the order a worker should try them.

    Cancels first (they only need finalizing); then batches whose window closes within the
    deadline margin, soonest first, whatever their model; then the loaded model's batches (no
    swap), then by priority, then oldest first.
    """
    margin = timedelta(seconds=settings.WORKER_DEADLINE_MARGIN_SECONDS)
    far = now + timedelta(days=36500)

    def key(row: Mapping[str, Any]) -> tuple[int, datetime, int, int, str]:
        expires_at = row["expires_at"] or far
        cancelling = row["status"] == Batch.Status.CANCELLING
        urgent = expires_at <= now + margin
        return (
            0 if cancelling else 1 if urgent else 2,
            expires_at if urgent else far,
            0 if row["model"] == loaded_model else 1,
            -row["priority"],
            row["id"],
        )

    return [row["id"] for row in sorted(candidates, key=key)]


def batch_claim_next(*, worker_name: str, loaded_model: str) -> Batch | None:
    """Take a lease on the best runnable batch, or None if there is nothing to take."""
    now = timezone.now()
    # Served by batch_runnable_idx (a partial index over in_progress/cancelling).
    candidates = list(
        Batch.objects.runnable()
        .filter(_claimable(worker_name, now))
        .order_by("expires_at", "id")
        .values("id", "status", "model", "priority", "expires_at")[:200]
    )
    lease_until = now + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    for batch_id in batch_pick_order(candidates, loaded_model=loaded_model, now=now):
        with transaction.atomic():
            rows = Batch.objects.filter(pk=batch_id).runnable().filter(_claimable(worker_name, now))
            if connection.features.has_select_for_update_skip_locked:
                # PostgreSQL: workers polling at once skip each other's rows instead of queueing.
                rows = rows.select_for_update(skip_locked=True)
                if not rows.exists():
                    continue
            # Compare-and-set: 0 rows means another worker won the race.
            if rows.update(lease_owner=worker_name, lease_expires_at=lease_until):
                return Batch.objects.get(pk=batch_id)
    return None


def batch_lease_release(*, batch_id: str, worker_name: str) -> None:
    Batch.objects.filter(pk=batch_id, lease_owner=worker_name).update(
        lease_owner="", lease_expires_at=None
    )


def batch_lease_renew(*, batch_id: str, worker_name: str) -> bool:
    until = timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    return (
        Batch.objects.filter(pk=batch_id, lease_owner=worker_name).update(lease_expires_at=until)
        == 1
    )


def batches_waiting_on_dead_workers(*, worker_name: str, since: datetime) -> bool:
    """True if a runnable batch is held by another worker that has not beaten since ``since``.

    ``since`` is when this worker started looking. A worker killed a moment ago still has a fresh
    heartbeat, so freshness alone cannot tell it from a live one; but a live one beats again
    within a heartbeat period, and a dead one never does. Its batch becomes claimable within a
    few heartbeats, so an idle worker waits for it rather than leaving it to the next sweep.
    """
    beaten_since = Worker.objects.filter(name=OuterRef("lease_owner"), last_heartbeat_at__gt=since)
    return (
        Batch.objects.runnable()
        .exclude(lease_owner__in=("", worker_name, FINALIZATION_LEASE_OWNER))
        .filter(~Exists(beaten_since))
        .exists()
    )


# --- Running ----------------------------------------------------------------------------------


@dataclass
class InputLine:
    number: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class ChunkPlan:
    index: int
    start_line: int
    start_offset: int


def chunk_next_plan(batch: Batch) -> ChunkPlan:
    """Where the next chunk starts: right after the last recorded one."""
    last = BatchChunk.objects.filter(batch=batch).order_by("-index").first()
    if last is None:
        return ChunkPlan(index=0, start_line=1, start_offset=0)
    return ChunkPlan(index=last.index + 1, start_line=last.end_line, start_offset=last.end_offset)


def read_chunk(
    stream: IO[bytes], *, start_line: int, limit: int
) -> tuple[list[InputLine], int, int]:
    """Read up to ``limit`` requests from the stream's position.

    Returns the requests, the number of the first line not read, and how many bytes were read.
    Blank lines are skipped but counted, so line numbers match the file.
    """
    requests: list[InputLine] = []
    number = start_line
    consumed = 0
    while len(requests) < limit:
        raw = stream.readline()
        if not raw:
            break
        consumed += len(raw)
        line_number = number
        number += 1
        if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        request = json.loads(raw)
        requests.append(InputLine(line_number, request["custom_id"], request["body"]))
    return requests, number, consumed


def _chunk_dir(batch_id: str) -> str:
    return f"batches/{batch_id}/chunks"


class StorageWriteError(Exception):
    """Storage refused the results (a full disk, a bucket outage): the batch cannot go on."""


def _save_blob(name: str, lines: list[str]) -> str:
    if not lines:
        return ""
    try:
        return default_storage.save(name, ContentFile(("\n".join(lines) + "\n").encode()))
    except Exception as error:  # each backend fails its own way: OSError on disk, others on S3
        raise StorageWriteError(f"Could not store the batch's results: {error}") from error


class LeaseLostError(Exception):
    """Another worker took the batch (we looked dead to it); stop without recording anything."""


def chunk_record(
    *,
    batch: Batch,
    plan: ChunkPlan,
    end_line: int,
    end_offset: int,
    results: list[Any],
    worker_name: str,
    seconds: float,
) -> BatchChunk:
    """Make one chunk's results durable: blobs first, then one transaction for row and counts."""
    ok_lines: list[str] = []
    error_lines: list[str] = []
    input_tokens = output_tokens = 0
    for result in results:
        (ok_lines if result.ok else error_lines).append(json.dumps(result.line))
        input_tokens += result.input_tokens
        output_tokens += result.output_tokens
    # A name of its own per attempt: a worker that lost its lease never touches the blobs of
    # the attempt that was recorded.
    base = f"{_chunk_dir(batch.id)}/{plan.index:06d}-{secrets.token_hex(4)}"
    saved_out = _save_blob(f"{base}.out.jsonl", ok_lines)
    saved_err = _save_blob(f"{base}.err.jsonl", error_lines)
    try:
        with transaction.atomic():
            chunk = BatchChunk.objects.create(
                batch=batch,
                index=plan.index,
                start_line=plan.start_line,
                end_line=end_line,
                start_offset=plan.start_offset,
                end_offset=end_offset,
                output_name=saved_out,
                error_name=saved_err,
                completed=len(ok_lines),
                failed=len(error_lines),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                worker=worker_name,
                seconds=seconds,
            )
            moved = Batch.objects.filter(pk=batch.id, lease_owner=worker_name).update(
                request_completed=F("request_completed") + len(ok_lines),
                request_failed=F("request_failed") + len(error_lines),
                input_tokens=F("input_tokens") + input_tokens,
                output_tokens=F("output_tokens") + output_tokens,
                lease_expires_at=timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS),
            )
            if not moved:
                raise LeaseLostError(batch.id)
    except (IntegrityError, LeaseLostError):
        # Someone else recorded this chunk (or holds the batch now): ours must leave no trace.
        for name in (saved_out, saved_err):
            if name:
                default_storage.delete(name)
        raise LeaseLostError(batch.id) from None
    return chunk


def _stop_reason(batch_id: str, worker_name: str) -> str | None:
    """Why the worker should stop before the next chunk, if it should."""
    state = Batch.objects.filter(pk=batch_id).values("status", "expires_at", "lease_owner").first()
    if state is None:
        return "deleted"
    if state["lease_owner"] != worker_name:
        return "lease_lost"
    if state["status"] == Batch.Status.CANCELLING:
        return "cancelled"
    if state["status"] != Batch.Status.IN_PROGRESS:
        return "not_running"
    if state["expires_at"] is not None and state["expires_at"] <= timezone.now():
        return "expired"
    return None


@dataclass
class StartedChunk:
    """A chunk read from the input file whose requests are in the engine."""

    plan: ChunkPlan
    requests: int
    end_line: int
    end_offset: int
    run: ChunkRun  # the engine's handle on it

    @property
    def next_plan(self) -> ChunkPlan:
        return ChunkPlan(
            index=self.plan.index + 1, start_line=self.end_line, start_offset=self.end_offset
        )


def _chunk_start(
    engine: Any, endpoint: str, stream: IO[bytes], plan: ChunkPlan
) -> StartedChunk | None:
    """Read the chunk at ``plan`` and hand its requests to the engine; None at the end."""
    requests, end_line, consumed = read_chunk(
        stream, start_line=plan.start_line, limit=settings.BATCH_CHUNK_SIZE
    )
    if not requests:
        return None
    run = engine.start_chunk(endpoint, [(item.custom_id, item.body) for item in requests])
    return StartedChunk(plan, len(requests), end_line, plan.start_offset + consumed, run)


def _chunks_run(
    *,
    batch: Batch,
    worker: WorkerHandle,
    engine: Engine,
    stream: IO[bytes],
    plan: ChunkPlan,
    deadline: float,
) -> tuple[str, ChunkPlan]:
    """Run and record chunks from ``plan`` on; returns why it stopped and where it stopped.

    The next chunk goes into the engine while the last requests of the current one run, so
    vLLM never drains between chunks (it did five times in a 10,000-request batch: 8% of the
    engine's time). A chunk is still recorded only once all its results are in, so a killed
    worker loses the chunk in flight and the part of the next one that ran.
    """
    current: StartedChunk | None = None
    ahead: StartedChunk | None = None
    # A chunk's seconds run from the end of the previous chunk's bookkeeping, so that they add
    # up to the batch's wall time and the ETAs made from them hold.
    chunk_started = time.monotonic()
    try:
        while True:
            stop = _stop_reason(batch.id, worker.name)
            if stop is not None:
                return stop, plan
            if time.monotonic() > deadline:
                return "budget", plan
            current, ahead = ahead or _chunk_start(engine, batch.endpoint, stream, plan), None
            if current is None:
                return "done", plan
            engine.wait_until_few_left(current.run)
            ahead = _chunk_start(engine, batch.endpoint, stream, current.next_plan)
            results = engine.finish_chunk(current.run)
            seconds = time.monotonic() - chunk_started
            chunk = chunk_record(
                batch=batch,
                plan=current.plan,
                end_line=current.end_line,
                end_offset=current.end_offset,
                results=results,
                worker_name=worker.name,
                seconds=seconds,
            )
            worker.chunk_done(current.requests, chunk.output_tokens, seconds)
            batch_event_record(
                batch_id=batch.id,
                kind="chunk_done",
                message=f"chunk {chunk.index} done: {current.requests} requests in "
                f"{seconds:.2f}s, {chunk.output_tokens / seconds if seconds else 0:,.0f} "
                "output tokens/s",
                index=chunk.index,
                requests=current.requests,
                failed=chunk.failed,
                seconds=round(seconds, 3),
                tokens_per_second=round(chunk.output_tokens / seconds, 1) if seconds else 0,
            )
            plan, current = current.next_plan, None
            chunk_started = time.monotonic()
    finally:
        # Stopped (cancel, expiry, budget, a lost lease, a dead engine): what is still running
        # goes; the next worker starts again after the last recorded chunk.
        for started in (current, ahead):
            if started is not None:
                engine.abort(started.run)


def batch_run(*, batch: Batch, worker: WorkerHandle, deadline: float) -> bool:
    """Run a claimed batch chunk by chunk. Returns False if the time budget ran out first."""
    from inference import engine as engine_module

    registered = RegisteredModel.objects.enabled().filter(name=batch.model).first()
    if registered is None and batch.status == Batch.Status.IN_PROGRESS:
        logger.error("batch %s: model %r is no longer registered", batch.id, batch.model)
        _to_finalizing(batch.id, worker.name)
        return True

    input_file = File.objects.filter(pk=batch.input_file_id).first()
    plan = chunk_next_plan(batch)
    stop = _stop_reason(batch.id, worker.name)
    if stop is None and registered is not None and input_file is not None:
        # First, so the heartbeat renews the lease while the model loads (loads can outlast it).
        worker.batch_started(batch.id)
        started = time.monotonic()
        engine = engine_module.engine_get(registered)
        load_seconds = time.monotonic() - started
        worker.model_loaded(registered.name, load_seconds if load_seconds > 0.5 else None)
        batch_event_record(
            batch_id=batch.id,
            kind="started",
            message=f"worker {worker.name} took the batch at line {plan.start_line}",
            worker=worker.name,
            start_line=plan.start_line,
            model_load_seconds=round(load_seconds, 3),
        )
        with input_file.content.open("rb") as stream:
            stream.seek(plan.start_offset)
            stop, plan = _chunks_run(
                batch=batch,
                worker=worker,
                engine=engine,
                stream=stream,
                plan=plan,
                deadline=deadline,
            )
        if stop == "budget":
            batch_lease_release(batch_id=batch.id, worker_name=worker.name)
            return False
    elif input_file is None:
        stop = "done"

    if stop == "lease_lost" or stop == "deleted" or stop == "not_running":
        return True
    if stop == "done":
        _to_finalizing(batch.id, worker.name)
    else:  # cancelled or expired: finalize works out which from the batch's state
        batch_event_record(
            batch_id=batch.id,
            kind=str(stop),
            message=f"worker stopped before line {plan.start_line}: {stop}",
            line=plan.start_line,
        )
        _to_finalization_lease(batch.id, worker.name)
    return True


def _to_finalization_lease(batch_id: str, worker_name: str) -> None:
    """Hand a cancelled or expired batch this worker holds over to its finalization."""
    with transaction.atomic():
        handed = Batch.objects.filter(pk=batch_id, lease_owner=worker_name).update(
            lease_owner=FINALIZATION_LEASE_OWNER,
            lease_expires_at=timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS),
        )
        if handed:
            transaction.on_commit(lambda: finalize_enqueue(batch_id))


def batch_fail(*, batch_id: str, worker_name: str, message: str) -> None:
    """End a batch this worker holds as failed, with the reason, instead of retrying forever."""
    error = {"code": "server_error", "message": message, "param": None, "line": None}
    with transaction.atomic():
        failed = Batch.objects.filter(
            pk=batch_id, lease_owner=worker_name, status__in=Batch.RUNNABLE_STATUSES
        ).update(
            status=Batch.Status.FAILED,
            failed_at=timezone.now(),
            errors={"object": "list", "data": [error]},
            lease_owner="",
            lease_expires_at=None,
        )
        if failed:
            transaction.on_commit(lambda: handlers_dispatch(batch_id=batch_id))
    if failed:
        batch_event_record(batch_id=batch_id, kind="failed", message=f"failed: {message}")
        _chunk_blobs_delete(batch_id)  # a failed batch has no output: its partial results go


def _to_finalizing(batch_id: str, worker_name: str) -> None:
    with transaction.atomic():
        batch_transition(
            batch_id,
            from_statuses=(Batch.Status.IN_PROGRESS,),
            status=Batch.Status.FINALIZING,
            finalizing_at=timezone.now(),
        )
        batch_lease_release(batch_id=batch_id, worker_name=worker_name)
        transaction.on_commit(lambda: finalize_enqueue(batch_id))


# --- Finalization -----------------------------------------------------------------------------


def _unfinished_requests(batch: Batch) -> Iterator[InputLine]:
    """The requests after the last recorded chunk (those a cancel or expiry left unrun)."""
    input_file = File.objects.filter(pk=batch.input_file_id).first()
    if input_file is None:
        return
    plan = chunk_next_plan(batch)
    with input_file.content.open("rb") as stream:
        stream.seek(plan.start_offset)
        while True:
            requests, end_line, _ = read_chunk(stream, start_line=plan.start_line, limit=1000)
            if not requests:
                return
            yield from requests
            plan = ChunkPlan(index=plan.index, start_line=end_line, start_offset=0)


def error_line(custom_id: str, *, code: str, message: str) -> dict[str, Any]:
    """An error-file line readable by both conventions: response.body.error and top-level error."""
    return {
        "id": new_batch_request_id(),
        "custom_id": custom_id,
        "response": {
            "status_code": 400,
            "request_id": new_batch_request_id().replace("batch_req_", "req_"),
            "body": {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            },
        },
        "error": {"code": code, "message": message},
    }


def _concatenate(names: list[str], out: IO[bytes]) -> None:
    for name in names:
        with default_storage.open(name, "rb") as blob:
            shutil.copyfileobj(blob, out, length=1 << 20)


def batch_finalize(*, batch_id: str) -> Batch | None:
    """Assemble output and error files and end the batch. Safe to run twice: one run wins."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.is_terminal:
        return batch
    now = timezone.now()
    expired = batch.expires_at is not None and batch.expires_at <= now
    if batch.status == Batch.Status.FINALIZING:
        target, unfinished_code = Batch.Status.COMPLETED, "model_not_found"
    elif batch.status == Batch.Status.CANCELLING:
        target, unfinished_code = Batch.Status.CANCELLED, ""
    elif batch.status == Batch.Status.IN_PROGRESS and expired:
        target, unfinished_code = Batch.Status.EXPIRED, "batch_expired"
    else:
        return batch
    from_status = batch.status

    chunks = list(BatchChunk.objects.filter(batch=batch).order_by("index"))
    output_names = [c.output_name for c in chunks if c.output_name]
    error_names = [c.error_name for c in chunks if c.error_name]
    extra_failed = 0
    expires_at = (
        now + timedelta(seconds=batch.output_expires_after_seconds)
        if batch.output_expires_after_seconds
        else None
    )
    created: dict[str, File] = {}
    with (
        tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR) as out,
        tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR) as err,
    ):
        _concatenate(output_names, out)
        _concatenate(error_names, err)
        if unfinished_code:
            message = (
                "This request could not be executed before the completion window expired."
                if unfinished_code == "batch_expired"
                else f"The model '{batch.model}' is no longer available on this server."
            )
            for request in _unfinished_requests(batch):
                line = error_line(request.custom_id, code=unfinished_code, message=message)
                err.write(json.dumps(line).encode() + b"\n")
                extra_failed += 1
        for kind, handle in (("output", out), ("error", err)):
            if handle.tell() == 0:
                continue  # All requests failed (or none did): that file is null, as in OpenAI.
            handle.seek(0)
            created[kind] = file_create_generated(
                owner=batch.owner,
                purpose=File.Purpose.BATCH_OUTPUT,
                filename=f"{batch.id}_{kind}.jsonl",
                content=handle,
                expires_at=expires_at,
            )
    timestamp_field = {
        Batch.Status.COMPLETED: "completed_at",
        Batch.Status.CANCELLED: "cancelled_at",
        Batch.Status.EXPIRED: "expired_at",
    }[target]
    with transaction.atomic():
        won = batch_transition(
            batch.id,
            from_statuses=(from_status,),
            status=target,
            output_file=created.get("output"),
            error_file=created.get("error"),
            request_failed=F("request_failed") + extra_failed,
            lease_owner="",
            lease_expires_at=None,
            **{timestamp_field: timezone.now()},
        )
        if won:
            transaction.on_commit(lambda: handlers_dispatch(batch_id=batch.id))
    if won:
        batch_event_record(
            batch_id=batch.id,
            kind="finalized",
            message=f"finalized as {target}",
            status=target,
            output_file_id=created["output"].id if "output" in created else None,
            error_file_id=created["error"].id if "error" in created else None,
            unfinished_failed=extra_failed,
        )
    else:
        for file in created.values():
            file.content.delete(save=False)
            file.delete()
        return Batch.objects.filter(pk=batch.id).first()
    _chunk_blobs_delete(batch.id)
    _stale_outputs_delete(batch, keep=list(created.values()))
    logger.info("batch %s finalized as %s", batch.id, target)
    return Batch.objects.get(pk=batch.id)


def _chunk_blobs_delete(batch_id: str) -> None:
    # Recorded blobs and any a killed worker left behind: all of them are in the output now.
    directory = _chunk_dir(batch_id)
    try:
        _, names = default_storage.listdir(directory)
    except (FileNotFoundError, NotImplementedError):
        return
    for name in names:
        default_storage.delete(f"{directory}/{name}")


def _stale_outputs_delete(batch: Batch, *, keep: list[File]) -> None:
    # A finalization killed after storing its files left them unreferenced: only the winner's stay.
    stale = File.objects.filter(
        owner_id=batch.owner_id,
        purpose=File.Purpose.BATCH_OUTPUT,
        filename__in=[f"{batch.id}_output.jsonl", f"{batch.id}_error.jsonl"],
    ).exclude(pk__in=[file.pk for file in keep])
    for file in stale:
        file.content.delete(save=False)
        file.delete()


def finalizations_resume() -> int:
    """Enqueue finalization for every batch waiting for it (a CPU cluster is starting)."""
    ids = list(
        Batch.objects.filter(status=Batch.Status.FINALIZING).values_list("id", flat=True)[:500]
    )
    for batch_id in ids:
        finalize_enqueue(batch_id)
    return len(ids)


# --- Sweep ------------------------------------------------------------------------------------

WORKER_ROWS_KEPT = timedelta(days=1)


def batches_sweep() -> dict[str, int]:
    """Periodic housekeeping on the CPU cluster: expiry, orphaned work, stuck finalizations."""
    now = timezone.now()
    counts = {"expired": 0, "finalize": 0, "wake": 0, "workers_pruned": 0}
    # Never validated within the window: nothing ran, nothing to assemble; but its owner is told
    # as of any other end (the batch.expired webhook, result handlers).
    never_validated = Batch.objects.filter(status=Batch.Status.VALIDATING, expires_at__lte=now)
    for batch_id in never_validated.values_list("id", flat=True)[:500]:
        with transaction.atomic():
            expired = batch_transition(
                batch_id,
                from_statuses=(Batch.Status.VALIDATING,),
                status=Batch.Status.EXPIRED,
                expired_at=now,
            )
            if expired:
                transaction.on_commit(functools.partial(handlers_dispatch, batch_id=batch_id))
        if expired:
            counts["expired"] += 1
            batch_event_record(
                batch_id=batch_id,
                kind="expired",
                message="expired before its input file was validated",
            )
    lease_free = Q(lease_owner="") | Q(lease_expires_at__lt=now)
    to_finalize = list(
        Batch.objects.filter(
            (Q(status=Batch.Status.IN_PROGRESS, expires_at__lte=now) & lease_free)
            | (Q(status=Batch.Status.CANCELLING) & lease_free)
            | Q(status=Batch.Status.FINALIZING, finalizing_at__lte=now - timedelta(minutes=2))
        ).values_list("id", flat=True)[:500]
    )
    for batch_id in to_finalize:
        finalize_enqueue(batch_id)
    counts["finalize"] = len(to_finalize)
    # Free, or held by a worker that stopped heartbeating (killed, or its machine is): a GPU
    # task takes it over at once instead of after the lease runs out.
    if Batch.objects.runnable().filter(_claimable("", now)).exists():
        workers_wake()
        counts["wake"] = 1
    # Workers silent this long are gone for good (each restart is a new host:pid row): their
    # rows would only pile up on the workers page.
    counts["workers_pruned"], _ = Worker.objects.filter(
        last_heartbeat_at__lt=now - WORKER_ROWS_KEPT
    ).delete()
    return counts


# --- Registry -------------------------------------------------------------------------------


def model_register(
    *,
    name: str,
    source: str,
    engine_args: dict[str, Any] | None = None,
    default_sampling: dict[str, Any] | None = None,
    enabled: bool = True,
) -> tuple[RegisteredModel, bool]:
    """Create the model, or update it: given engine arguments merge over the stored ones."""
    model, created = RegisteredModel.objects.get_or_create(
        name=name,
        defaults={
            "source": source,
            "engine_args": engine_args or {},
            "default_sampling": default_sampling or {},
            "enabled": enabled,
        },
    )
    if not created:
        model.source = source
        model.engine_args = {**model.engine_args, **(engine_args or {})}
        if default_sampling is not None:
            model.default_sampling = default_sampling
        model.enabled = enabled
        model.save(
            update_fields=["source", "engine_args", "default_sampling", "enabled", "updated_at"]
        )
    return model, created


# --- Worker bookkeeping -----------------------------------------------------------------------


class WorkerHandle:
    """This process's row in the worker table; the heartbeat thread lives in inference.worker."""

    def __init__(self, name: str) -> None:
        self.name = name

    def model_loaded(self, model_name: str, load_seconds: float | None) -> None:
        fields: dict[str, Any] = {"loaded_model": model_name}
        if load_seconds is not None:
            fields["model_load_seconds"] = load_seconds
        Worker.objects.filter(name=self.name).update(**fields)

    def batch_started(self, batch_id: str) -> None:
        Worker.objects.filter(name=self.name).update(current_batch_id=batch_id)

    def batch_finished(self) -> None:
        Worker.objects.filter(name=self.name).update(current_batch_id="")

    def chunk_done(self, requests: int, output_tokens: int, seconds: float) -> None:
        Worker.objects.filter(name=self.name).update(
            requests_done=F("requests_done") + requests,
            throughput=output_tokens / seconds if seconds > 0 else 0.0,
        )


def database_wait(*, poll_seconds: float = 1.0) -> None:
    """Block until the database answers again, on a fresh connection (after an outage)."""
    while True:
        try:
            connection.close()
            connection.ensure_connection()
            return
        except (OperationalError, InterfaceError):
            time.sleep(poll_seconds)


# Engine deaths per (batch, chunk start) in this process: a request that reliably kills vLLM
# must fail its batch rather than crash-loop the worker.
_engine_deaths: dict[tuple[str, int], int] = {}
MAX_ENGINE_DEATHS_PER_CHUNK = 3


def _engine_died(batch: Batch, worker: WorkerHandle, error: Exception) -> bool:
    """The chunk in flight is lost (nothing was recorded): reload and retry, a few times."""
    from inference import engine as engine_module

    engine_module.engine_release()
    key = (batch.id, chunk_next_plan(batch).start_line)
    _engine_deaths[key] = _engine_deaths.get(key, 0) + 1
    logger.error(
        "batch %s: the engine died (%d time(s) on this chunk): %s",
        batch.id,
        _engine_deaths[key],
        error,
    )
    if _engine_deaths[key] >= MAX_ENGINE_DEATHS_PER_CHUNK:
        batch_fail(
            batch_id=batch.id,
            worker_name=worker.name,
            message=f"The engine crashed {MAX_ENGINE_DEATHS_PER_CHUNK} times on the requests "
            f"from line {key[1]}: {error}",
        )
        return True
    batch_lease_release(batch_id=batch.id, worker_name=worker.name)
    return True


def batches_run(*, worker: WorkerHandle, budget_seconds: float) -> int:
    """Claim and run batches until none is left or the budget is spent; returns batches run."""
    from inference import engine as engine_module

    deadline = time.monotonic() + budget_seconds
    ran = 0
    looking_since = timezone.now()
    # Longer than a dead worker takes to look dead (_stale_before), so its batch is ours in time.
    waited_until = time.monotonic() + 3 * settings.WORKER_HEARTBEAT_SECONDS + 5
    while time.monotonic() < deadline:
        loaded = engine_module.engine_loaded()
        batch = batch_claim_next(
            worker_name=worker.name, loaded_model=loaded.model_name if loaded else ""
        )
        if batch is None:
            # A dead worker's batch frees up within a few heartbeats: wait for it, briefly.
            if time.monotonic() < waited_until and batches_waiting_on_dead_workers(
                worker_name=worker.name, since=looking_since
            ):
                time.sleep(1.0)
                continue
            break
        ran += 1
        lease_free = Q(lease_owner="") | Q(lease_expires_at__lt=timezone.now())
        if Batch.objects.runnable().filter(lease_free).exists():
            # More work than this worker: a task for an idle one (busy clusters prefetch tasks,
            # so the single wake-up at start may have gone to a worker that is not idle).
            workers_wake()
        # Every line about this batch carries its id and ours, the early endings' included.
        with log_context(batch_id=batch.id, worker_id=worker.name):
            try:
                finished = batch_run(batch=batch, worker=worker, deadline=deadline)
            except LeaseLostError:
                logger.warning("batch %s: lease lost to another worker", batch.id)
                finished = True
            except StorageWriteError as error:
                batch_fail(batch_id=batch.id, worker_name=worker.name, message=str(error))
                finished = True
            except engine_module.EngineDiedError as error:
                finished = _engine_died(batch, worker, error)
            except (OperationalError, InterfaceError) as error:
                # Our lease is still ours: once the database is back, the next claim resumes the
                # batch after its last recorded chunk.
                logger.warning(
                    "batch %s: database unreachable (%s); waiting for it", batch.id, error
                )
                database_wait()
                finished = True
            finally:
                worker.batch_finished()
        if not finished:
            break
    lease_free = Q(lease_owner="") | Q(lease_expires_at__lt=timezone.now())
    if Batch.objects.runnable().filter(lease_free).exists():
        # Budget spent with work left: hand over to a fresh task rather than outlive the timeout.
        workers_wake()
    return ran
