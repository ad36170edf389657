"""Writes and state transitions for files, batches and API keys."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.files import File as DjangoFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from batches.api.errors import ConflictError, PayloadTooLargeError
from batches.api.throttles import queued_requests_error
from batches.events import batch_event_record
from batches.handlers import handlers_dispatch
from batches.models import ApiKey, Batch, File
from batches.validation import iter_lines, validate_lines
from batchsite.env import duration_seconds

logger = logging.getLogger(__name__)


def completion_window_seconds(window: str) -> int:
    """'24h' -> 86400, '2d' -> 172800, '90m' -> 5400: any window settings can hold."""
    seconds = duration_seconds(window)
    # Settings refuse a malformed window at start-up and the serializer accepts only those.
    if seconds is None:
        raise ValueError(f"Completion window {window!r} is not <positive integer><m|h|d>.")
    return seconds


# --- API keys ---------------------------------------------------------------------------------


def api_key_create(*, owner: Any, name: str) -> tuple[ApiKey, str]:
    """Create a key; the raw key is returned once and never stored."""
    prefix = secrets.token_hex(ApiKey.PREFIX_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        owner=owner, name=name, prefix=prefix, secret_hash=ApiKey.hash_secret(secret)
    )
    return key, f"{ApiKey.PREFIX}{prefix}-{secret}"


def api_key_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])


def api_key_create_for_username(*, username: str, name: str) -> tuple[ApiKey, str]:
    user_model = get_user_model()
    # A user made for a key logs in with nothing but that key: no usable password.
    owner, _ = user_model.objects.get_or_create(
        username=username, defaults={"password": make_password(None)}
    )
    return api_key_create(owner=owner, name=name)


# --- Files ------------------------------------------------------------------------------------


def _clean_filename(name: str) -> str:
    # Only the last path component, no control characters: the name is shown back to people.
    base = os.path.basename(name.replace("\\", "/")) or "file"
    return "".join(ch for ch in base if ch.isprintable())[:255] or "file"


def file_create(
    *,
    owner: Any,
    upload: UploadedFile[bytes],
    purpose: str,
    expires_after_seconds: int | None = None,
) -> File:
    size = upload.size or 0
    if purpose == File.Purpose.BATCH and size > settings.BATCH_MAX_INPUT_FILE_BYTES:
        raise PayloadTooLargeError(
            f"File is too large: {size:,} bytes. Batch input files may be at most "
            f"{settings.BATCH_MAX_INPUT_FILE_BYTES:,} bytes.",
            param="file",
            code="file_too_large",
        )
    now = timezone.now()
    file = File(
        owner=owner,
        purpose=purpose,
        filename=_clean_filename(upload.name or "file"),
        bytes=size,
        created_at=now,
        expires_at=(
            now + timedelta(seconds=expires_after_seconds) if expires_after_seconds else None
        ),
    )
    # Storage moves a spooled upload into place; nothing is read into memory here.
    file.content.save(file.id, upload, save=False)
    file.save(force_insert=True)
    return file


def file_create_generated(
    *,
    owner: Any,
    purpose: str,
    filename: str,
    content: IO[bytes],
    expires_at: datetime | None = None,
) -> File:
    """Store a file the server wrote (batch output or errors) from an open binary stream."""
    file = File(owner=owner, purpose=purpose, filename=filename, expires_at=expires_at)
    file.content.save(file.id, DjangoFile(content), save=False)
    file.bytes = file.content.size
    file.save(force_insert=True)
    return file


def file_delete(*, file: File) -> None:
    # Only the owner's batches can read the file: another owner may name this id in a batch
    # (validation fails it later), and must neither block the delete nor see its id leaked.
    readers = (
        Batch.objects.active()
        .filter(input_file_id=file.id, owner_id=file.owner_id)
        .values_list("id", flat=True)
    )
    reader = next(iter(readers[:1]), None)
    if reader is not None:
        raise ConflictError(
            f"File {file.id} is the input of batch {reader}, which has not finished; cancel the "
            "batch or wait for it to end before deleting the file.",
            param="file_id",
            code="file_in_use",
        )
    name = file.content.name
    storage = file.content.storage
    file.delete()
    # The row goes first: a crash in between leaves an orphan blob, never a row without content.
    if name:
        transaction.on_commit(lambda: storage.delete(name))


# --- Batches ----------------------------------------------------------------------------------


def batch_create(
    *,
    owner: Any,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None = None,
    output_expires_after_seconds: int | None = None,
    priority: int = 0,
) -> Batch:
    now = timezone.now()
    batch = Batch.objects.create(
        owner=owner,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata,
        output_expires_after_seconds=output_expires_after_seconds,
        priority=priority,
        created_at=now,
        expires_at=now + timedelta(seconds=completion_window_seconds(completion_window)),
    )
    from batches import tasks

    transaction.on_commit(lambda: tasks.enqueue_validation(batch.id))
    return batch


def batch_transition(batch_id: str, *, from_statuses: tuple[str, ...], **fields: Any) -> bool:
    """Compare-and-set: apply ``fields`` only if the batch is still in one of ``from_statuses``."""
    return Batch.objects.filter(pk=batch_id, status__in=from_statuses).update(**fields) == 1


def _input_file_error(message: str, *, param: str) -> dict[str, Any]:
    return {"code": "invalid_request", "message": message, "param": param, "line": None}


def _batch_input_check(batch: Batch) -> tuple[list[dict[str, Any]], int, str]:
    """(errors, request count, model) of a batch's input file, read as a stream."""
    from inference.models import RegisteredModel

    file = File.objects.filter(pk=batch.input_file_id, owner_id=batch.owner_id).first()
    if file is None:
        message = f"Cannot find file {batch.input_file_id}, or it does not belong to you."
        return [_input_file_error(message, param="file_id")], 0, ""
    if file.purpose != File.Purpose.BATCH:
        message = (
            f"File {file.id} was uploaded with purpose '{file.purpose}'; a batch input file must "
            "have purpose 'batch'."
        )
        return [_input_file_error(message, param="input_file_id")], 0, ""
    if file.bytes > settings.BATCH_MAX_INPUT_FILE_BYTES:
        message = (
            f"The input file is {file.bytes:,} bytes; the maximum is "
            f"{settings.BATCH_MAX_INPUT_FILE_BYTES:,} bytes."
        )
        return [_input_file_error(message, param="input_file_id")], 0, ""
    enabled = set(RegisteredModel.objects.enabled().values_list("name", flat=True))
    try:
        with file.content.open("rb") as stream:
            result = validate_lines(
                iter_lines(stream),
                endpoint=batch.endpoint,
                model_exists=enabled.__contains__,
                max_requests=settings.BATCH_MAX_REQUESTS,
                max_errors=settings.BATCH_MAX_VALIDATION_ERRORS,
            )
    except FileNotFoundError:
        # The row outlived its content (storage wiped by hand): that will not heal by retrying.
        logger.exception("input file %s of batch %s has no content", file.id, batch.id)
        message = f"The content of file {file.id} is missing; upload the file again."
        return [_input_file_error(message, param="input_file_id")], 0, ""
    return [error.as_dict() for error in result.errors], result.request_count, result.model or ""


def batch_validate(*, batch_id: str) -> Batch:
    """Read the whole input file; move the batch to in_progress, or to failed with its errors."""
    batch = Batch.objects.get(pk=batch_id)
    if batch.status != Batch.Status.VALIDATING:
        return batch
    errors, total, model = _batch_input_check(batch)
    if not errors:
        # The owner's cap on waiting requests: a valid batch that would pass it fails as a whole.
        over_cap = queued_requests_error(batch=batch, request_total=total)
        errors = [over_cap] if over_cap else []

    now = timezone.now()
    if errors:
        if batch_transition(
            batch.id,
            from_statuses=(Batch.Status.VALIDATING,),
            status=Batch.Status.FAILED,
            failed_at=now,
            errors={"object": "list", "data": errors},
            model=model,
        ):
            _batch_ended(
                batch.id,
                kind="validation_failed",
                message=f"failed validation with {len(errors)} error(s)",
                errors=len(errors),
            )
    elif batch_transition(
        batch.id,
        from_statuses=(Batch.Status.VALIDATING,),
        status=Batch.Status.IN_PROGRESS,
        in_progress_at=now,
        request_total=total,
        model=model,
    ):
        batch_event_record(
            batch_id=batch.id,
            kind="validated",
            message=f"validated: {total} requests for {model}",
            requests=total,
            model=model,
        )
        from inference import services as inference_services

        transaction.on_commit(inference_services.workers_wake)
    return Batch.objects.get(pk=batch.id)


def _batch_ended(batch_id: str, *, kind: str, message: str, **data: Any) -> None:
    """Record a batch that ended here, not on a worker, and run its result handlers."""
    # As the worker does on its own endings: webhooks (batch.failed, batch.cancelled) and the
    # curation import start once the ending is committed.
    batch_event_record(batch_id=batch_id, kind=kind, message=message, **data)
    transaction.on_commit(lambda: handlers_dispatch(batch_id=batch_id))


def batch_cancel(*, batch: Batch) -> Batch:
    """Cancel now if no worker has started; otherwise ask the worker to stop (``cancelling``)."""
    now = timezone.now()
    done_statuses = (Batch.Status.CANCELLING, Batch.Status.CANCELLED)
    for _ in range(3):  # A worker may claim the batch between our read and our write.
        batch.refresh_from_db()
        if batch.status in done_statuses:
            return batch
        if batch.status in (Batch.Status.COMPLETED, Batch.Status.FAILED, Batch.Status.EXPIRED):
            raise ConflictError(f"Cannot cancel a batch with status '{batch.status}'.")
        if batch.status == Batch.Status.FINALIZING:
            raise ConflictError(
                "Cannot cancel a batch with status 'finalizing': all of its requests have run."
            )
        not_started = batch.status == Batch.Status.VALIDATING or (
            batch.status == Batch.Status.IN_PROGRESS
            and not batch.lease_owner
            and not batch.chunks.exists()
        )
        if not_started and Batch.objects.filter(
            pk=batch.pk, status=batch.status, lease_owner=""
        ).update(status=Batch.Status.CANCELLED, cancelling_at=now, cancelled_at=now):
            _batch_ended(batch.id, kind="cancelled", message="cancelled before any request ran")
            break
        if not not_started and batch_transition(
            batch.id,
            from_statuses=(Batch.Status.IN_PROGRESS,),
            status=Batch.Status.CANCELLING,
            cancelling_at=now,
        ):
            break
    batch.refresh_from_db()
    return batch
