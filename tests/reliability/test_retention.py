"""Expired files leave storage and the database; files that unfinished batches read stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.utils import timezone
from django_q.models import Schedule
from rest_framework.test import APIClient

from batches import retention, retention_tasks
from batches.models import Batch, File
from inference import services as inference_services
from inference.models import BatchChunk, RegisteredModel
from tests.conftest import chat_line
from tests.reliability.conftest import create_batch, jsonl, upload

pytestmark = pytest.mark.django_db

HOUR = 3600
CaptureOnCommit = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


def stored_name(file: File) -> str:
    assert file.content.name, file
    return file.content.name


def expiring_upload(api: APIClient, seconds: int = HOUR) -> File:
    body = upload(
        api,
        jsonl([chat_line("a")]),
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)},
    )
    assert body["expires_at"] == body["created_at"] + seconds
    return File.objects.get(pk=body["id"])


def sweep_at(capture: CaptureOnCommit, when: timedelta) -> retention.RetentionReport:
    # The blob is deleted after the row's transaction commits: run those callbacks too.
    with capture(execute=True):
        return retention.files_delete_expired(now=timezone.now() + when)


def test_an_upload_with_expires_after_is_deleted_from_storage_and_database_once_it_expires(
    api: APIClient, django_capture_on_commit_callbacks: CaptureOnCommit
) -> None:
    file = expiring_upload(api)
    name = stored_name(file)
    assert default_storage.exists(name)

    report = sweep_at(django_capture_on_commit_callbacks, timedelta(hours=1, seconds=1))

    assert report == retention.RetentionReport(deleted=1, deferred=0, orphaned=0)
    assert not File.objects.filter(pk=file.id).exists()
    assert not default_storage.exists(name)
    assert api.get(f"/v1/files/{file.id}").status_code == 404
    assert api.get(f"/v1/files/{file.id}/content").status_code == 404


def test_a_file_is_kept_until_it_expires_and_files_without_expiry_are_kept_forever(
    api: APIClient, django_capture_on_commit_callbacks: CaptureOnCommit
) -> None:
    expiring = expiring_upload(api, seconds=2 * HOUR)
    forever = File.objects.get(pk=upload(api, jsonl([chat_line("b")]))["id"])

    early = sweep_at(django_capture_on_commit_callbacks, timedelta(hours=1, minutes=59))
    late = sweep_at(django_capture_on_commit_callbacks, timedelta(days=3650))

    assert early.deleted == 0
    assert late.deleted == 1
    assert not File.objects.filter(pk=expiring.id).exists()
    assert default_storage.exists(stored_name(forever))
    assert api.get(f"/v1/files/{forever.id}/content").status_code == 200


def test_batch_outputs_expire_after_output_expires_after(
    owner: User,
    api: APIClient,
    registered_model: RegisteredModel,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    content = jsonl([chat_line("ok"), chat_line("bad")])
    file_id = upload(api, content)["id"]
    batch_id = create_batch(
        api, file_id, output_expires_after={"anchor": "created_at", "seconds": HOUR}
    )["id"]
    # The state a worker leaves behind: one recorded chunk with an output and an error line.
    ok = {"id": "batch_req_1", "custom_id": "ok", "response": {"status_code": 200}, "error": None}
    bad = inference_services.error_line("bad", code="invalid_value", message="no")
    BatchChunk.objects.create(
        batch_id=batch_id,
        index=0,
        start_line=1,
        end_line=3,
        start_offset=0,
        end_offset=len(content),
        output_name=default_storage.save("chunk.out", ContentFile(json.dumps(ok) + "\n")),
        error_name=default_storage.save("chunk.err", ContentFile(json.dumps(bad) + "\n")),
        completed=1,
        failed=1,
    )
    Batch.objects.filter(pk=batch_id).update(
        status=Batch.Status.FINALIZING, request_total=2, request_completed=1, request_failed=1
    )
    batch = inference_services.batch_finalize(batch_id=batch_id)
    assert batch is not None and batch.status == Batch.Status.COMPLETED
    outputs = [batch.output_file, batch.error_file]
    names = [stored_name(f) for f in outputs if f is not None]
    assert len(names) == 2
    assert all(f is not None and f.expires_at is not None for f in outputs)
    assert api.get(f"/v1/files/{batch.output_file_id}/content").status_code == 200

    report = sweep_at(django_capture_on_commit_callbacks, timedelta(hours=1, seconds=1))

    assert report.deleted == 2
    assert not any(default_storage.exists(name) for name in names)
    assert not File.objects.filter(pk__in=[batch.output_file_id, batch.error_file_id]).exists()
    # The batch itself is kept (its input file has no expiry): only its results are gone.
    assert api.get(f"/v1/batches/{batch_id}").json()["status"] == "completed"
    assert api.get(f"/v1/files/{file_id}").status_code == 200


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_an_expired_input_file_is_kept_while_a_batch_reads_it_and_deleted_once_it_ends(
    api: APIClient,
    registered_model: RegisteredModel,
    status: str,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    file = expiring_upload(api)
    batch_id = create_batch(api, file.id)["id"]
    Batch.objects.filter(pk=batch_id).update(status=status)

    while_running = sweep_at(django_capture_on_commit_callbacks, timedelta(hours=2))

    assert while_running == retention.RetentionReport(deleted=0, deferred=1, orphaned=0)
    assert default_storage.exists(stored_name(file))
    assert api.get(f"/v1/files/{file.id}/content").status_code == 200

    Batch.objects.filter(pk=batch_id).update(status=Batch.Status.COMPLETED)
    after_the_end = sweep_at(django_capture_on_commit_callbacks, timedelta(hours=2))

    assert after_the_end == retention.RetentionReport(deleted=1, deferred=0, orphaned=0)
    assert not default_storage.exists(stored_name(file))


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_deleting_a_file_that_an_unfinished_batch_reads_is_refused_with_409(
    api: APIClient, registered_model: RegisteredModel, status: str
) -> None:
    file_id = upload(api, jsonl([chat_line("a")]))["id"]
    batch_id = create_batch(api, file_id)["id"]
    Batch.objects.filter(pk=batch_id).update(status=status)

    response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 409
    assert response["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "file_in_use"
    assert batch_id in response.json()["error"]["message"]
    assert api.get(f"/v1/files/{file_id}/content").status_code == 200


@pytest.mark.parametrize("status", ["completed", "failed", "expired", "cancelled"])
def test_the_input_of_a_batch_that_has_ended_can_be_deleted(
    api: APIClient,
    registered_model: RegisteredModel,
    status: str,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    file = File.objects.get(pk=upload(api, jsonl([chat_line("a")]))["id"])
    batch_id = create_batch(api, file.id)["id"]
    Batch.objects.filter(pk=batch_id).update(status=status)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/{file.id}")

    assert response.status_code == 200 and response.json()["deleted"] is True
    assert not default_storage.exists(stored_name(file))
    assert api.get(f"/v1/batches/{batch_id}").status_code == 200


def test_a_run_handles_at_most_its_limit_and_the_next_run_continues(
    api: APIClient, django_capture_on_commit_callbacks: CaptureOnCommit
) -> None:
    for _ in range(5):
        expiring_upload(api)
    later = timezone.now() + timedelta(hours=2)

    with django_capture_on_commit_callbacks(execute=True):
        first = retention.files_delete_expired(now=later, limit=3)
        second = retention.files_delete_expired(now=later, limit=3)

    assert (first.deleted, second.deleted) == (3, 2)
    assert not File.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_blob_that_cannot_be_deleted_does_not_stop_the_sweep(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Autocommit, as in the task: each blob is deleted as soon as its row is gone.
    files = [expiring_upload(api) for _ in range(2)]

    def broken_delete(self: FileSystemStorage, name: str) -> None:
        raise PermissionError(f"cannot delete {name}")

    monkeypatch.setattr(FileSystemStorage, "delete", broken_delete)
    report = retention.files_delete_expired(now=timezone.now() + timedelta(hours=2))

    assert report == retention.RetentionReport(deleted=2, deferred=0, orphaned=2)
    assert not File.objects.filter(pk__in=[f.id for f in files]).exists()


def test_the_retention_task_is_scheduled_every_few_minutes_on_the_cpu_cluster(
    api: APIClient,
) -> None:
    schedule = Schedule.objects.get(name="batches.retention")
    assert schedule.func == "batches.retention_tasks.delete_expired_files"
    assert schedule.cluster == "cpu"
    assert schedule.schedule_type == Schedule.MINUTES and 1 <= schedule.minutes <= 15
    assert schedule.repeats < 0  # forever

    File.objects.filter(pk=expiring_upload(api).id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert retention_tasks.delete_expired_files() == {"deleted": 1, "deferred": 0, "orphaned": 0}
