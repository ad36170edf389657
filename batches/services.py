"""Writes and state transitions for files, batches and API keys."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File as DjangoFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from batches.api.errors import ConflictError, InvalidRequest, PayloadTooLarge
from batches.models import ApiKey, Batch, File
from batches.validation import iter_lines, validate_lines

logger = logging.getLogger(__name__)

COMPLETION_WINDOW_SECONDS = {"24h": 24 * 3600}


def completion_window_seconds(window: str) -> int:
    """'24h' -> 86400; other windows (``<n>h``, ``<n>d``) only when settings allow them."""
    if window in COMPLETION_WINDOW_SECONDS:
        return COMPLETION_WINDOW_SECONDS[window]
    number, unit = window[:-1], window[-1:]
    return int(number) * {"h": 3600, "d": 86400, "m": 60}[unit]


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
    owner, _ = user_model.objects.get_or_create(username=username)
    return api_key_create(owner=owner, name=name)


# --- Files ------------------------------------------------------------------------------------


def _clean_filename(name: str) -> str:
    # Only the last path component, no control characters: the name is shown back to people.
    base = os.path.basename(name.replace("\\", "/")) or "file"
    return "".join(ch for ch in base if ch.isprintable())[:255] or "file"


def file_create(
    *,
    owner: Any,
    upload: UploadedFile,
    purpose: str,
    expires_after_seconds: int | None = None,
) -> File:
    size = upload.size or 0
    if purpose == File.Purpose.BATCH and size > settings.BATCH_MAX_INPUT_FILE_BYTES:
        raise PayloadTooLarge(
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
        expires_at=now + timedelta(seconds=expires_after_seconds) if expires_after_seconds else None,
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
    readers = Batch.objects.active().filter(input_file_id=file.id).values_list("id", flat=True)
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


def batch_validate(*, batch_id: str) -> Batch:
    """Read the whole input file; move the batch to in_progress, or to failed with its errors."""
    from inference.models import RegisteredModel

    batch = Batch.objects.get(pk=batch_id)
    if batch.status != Batch.Status.VALIDATING:
        return batch
    file = File.objects.filter(pk=batch.input_file_id, owner_id=batch.owner_id).first()
    errors: list[dict[str, Any]]
    total = 0
    model = ""
    if file is None:
        errors = [
            {
                "code": "invalid_request",
                "message": f"Cannot find file {batch.input_file_id}, or it does not belong to you.",
                "param": "file_id",
                "line": None,
            }
        ]
    elif file.purpose != File.Purpose.BATCH:
        errors = [
            {
                "code": "invalid_request",
                "message": f"File {file.id} was uploaded with purpose '{file.purpose}'; a batch "
                "input file must have purpose 'batch'.",
                "param": "input_file_id",
                "line": None,
            }
        ]
    elif file.bytes > settings.BATCH_MAX_INPUT_FILE_BYTES:
        errors = [
            {
                "code": "invalid_request",
                "message": f"The input file is {file.bytes:,} bytes; the maximum is "
                f"{settings.BATCH_MAX_INPUT_FILE_BYTES:,} bytes.",
                "param": "input_file_id",
                "line": None,
            }
        ]
    else:
        enabled = set(RegisteredModel.objects.enabled().values_list("name", flat=True))
        with file.content.open("rb") as stream:
            result = validate_lines(
                iter_lines(stream),
                endpoint=batch.endpoint,
                model_exists=enabled.__contains__,
                max_requests=settings.BATCH_MAX_REQUESTS,
                max_errors=settings.BATCH_MAX_VALIDATION_ERRORS,
            )
        errors = [error.as_dict() for error in result.errors]
        total = result.request_count
        model = result.model or ""

    now = timezone.now()
    if errors:
        batch_transition(
            batch.id,
            from_statuses=(Batch.Status.VALIDATING,),
            status=Batch.Status.FAILED,
            failed_at=now,
            errors={"object": "list", "data": errors},
            model=model,
        )
        logger.info("batch %s failed validation with %d errors", batch.id, len(errors))
    elif batch_transition(
        batch.id,
        from_statuses=(Batch.Status.VALIDATING,),
        status=Batch.Status.IN_PROGRESS,
        in_progress_at=now,
        request_total=total,
        model=model,
    ):
        logger.info("batch %s validated: %d requests for %s", batch.id, total, model)
        from inference import services as inference_services

        transaction.on_commit(inference_services.workers_wake)
    return Batch.objects.get(pk=batch.id)


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
            and not batch.chunks.exists()  # type: ignore[attr-defined]  # reverse FK from inference
        )
        if not_started and Batch.objects.filter(
            pk=batch.pk, status=batch.status, lease_owner=""
        ).update(status=Batch.Status.CANCELLED, cancelling_at=now, cancelled_at=now):
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
