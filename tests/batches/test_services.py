"""Services and model helpers below the API: races, edge rows, querysets."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils import timezone
from django_q.models import OrmQ

from batches import services
from batches.api.errors import OpenAIError
from batches.api.views import DownloadRenderer
from batches.models import Batch, BatchEvent, File, new_batch_request_id
from inference.models import RegisteredModel
from tests.batches.conftest import jsonl
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db

MakeBatch = Callable[..., Batch]


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", 86_400), ("72h", 259_200), ("2d", 172_800), ("90m", 5_400)]
)
def test_completion_windows_read_as_seconds(window: str, seconds: int) -> None:
    assert services.completion_window_seconds(window) == seconds


def test_a_batch_cancelled_while_its_file_was_read_stays_cancelled(
    make_file: Callable[..., File],
    make_batch: MakeBatch,
    registered_model: RegisteredModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = make_batch(input_file_id=make_file(jsonl([chat_line("a")])).id)
    check = services._batch_input_check

    def cancelled_meanwhile(batch: Batch) -> Any:
        result = check(batch)
        services.batch_cancel(batch=Batch.objects.get(pk=batch.pk))
        return result

    monkeypatch.setattr(services, "_batch_input_check", cancelled_meanwhile)

    validated = services.batch_validate(batch_id=batch.id)

    assert validated.status == Batch.Status.CANCELLED
    assert validated.request_total == 0


def test_cancel_answers_the_current_state_after_losing_every_race(
    make_batch: MakeBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch("in_progress", lease_owner="gpu-1")
    monkeypatch.setattr(services, "batch_transition", lambda *args, **kwargs: False)

    assert services.batch_cancel(batch=batch).status == Batch.Status.IN_PROGRESS


def test_deleting_a_file_row_without_content_deletes_no_blob(
    owner: User, django_capture_on_commit_callbacks: Any
) -> None:
    file = File.objects.create(owner=owner, purpose="batch", filename="lost.jsonl")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.file_delete(file=file)

    assert callbacks == []
    assert not File.objects.exists()


@override_settings(BATCH_MAX_VALIDATION_ERRORS=1)
def test_errors_past_the_bound_within_one_line_are_dropped(
    make_file: Callable[..., File], make_batch: MakeBatch
) -> None:
    file = make_file(jsonl([{"url": "/v1/chat/completions", "body": {}}]))

    batch = services.batch_validate(batch_id=make_batch(input_file_id=file.id).id)

    assert batch.errors is not None
    assert [e["param"] for e in batch.errors["data"]] == ["custom_id"]


def test_an_openai_error_can_carry_any_status_and_type() -> None:
    error = OpenAIError("Slow down.", status_code=429, error_type="requests")

    assert (error.status_code, error.error_type, error.headers) == (429, "requests", {})


def test_the_download_renderer_writes_errors_as_json() -> None:
    assert DownloadRenderer().render({"error": {"message": "x"}}) == b'{"error": {"message": "x"}}'


def test_create_api_key_for_a_new_username_creates_the_user(db: None) -> None:
    key, raw = services.api_key_create_for_username(username="robot", name="ci")

    assert key.owner.username == "robot"
    assert not key.owner.has_usable_password()
    assert raw.startswith("sk-batch-")


def test_batch_querysets_name_the_states_workers_poll(make_batch: MakeBatch) -> None:
    running = make_batch("in_progress")
    stopping = make_batch("cancelling")
    done = make_batch("completed")
    waiting = make_batch("validating")

    assert set(Batch.objects.runnable()) == {running, stopping}
    assert set(Batch.objects.terminal()) == {done}
    assert set(Batch.objects.active()) == {running, stopping, waiting}
    assert done.is_terminal and not running.is_terminal


def test_usage_totals_input_and_output_tokens(make_batch: MakeBatch) -> None:
    batch = make_batch("completed", input_tokens=10, output_tokens=5)

    assert batch.total_tokens == 15


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"status": "paused"}, "batch_status_valid"),
        ({"request_total": 2, "request_failed": 1, "request_completed": 2}, "batch_request_counts"),
        ({"output_tokens": -1}, "batch_tokens_non_negative"),
    ],
)
def test_the_database_refuses_a_batch_that_breaks_a_named_constraint(
    make_batch: MakeBatch, changes: dict[str, Any], constraint: str
) -> None:
    batch = make_batch("in_progress")

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        Batch.objects.filter(pk=batch.pk).update(**changes)


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [({"bytes": -1}, "file_bytes_non_negative"), ({"purpose": "x"}, "file_purpose_valid")],
)
def test_the_database_refuses_a_file_that_breaks_a_named_constraint(
    owner: User, changes: dict[str, Any], constraint: str
) -> None:
    file = File.objects.create(owner=owner, purpose="batch", filename="a")

    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        File.objects.filter(pk=file.pk).update(**changes)


def test_expired_files_are_those_past_their_expiry(owner: User) -> None:
    now = timezone.now()
    old = File.objects.create(owner=owner, purpose="batch", filename="a", expires_at=now)
    File.objects.create(owner=owner, purpose="batch", filename="b", expires_at=None)
    File.objects.create(
        owner=owner, purpose="batch", filename="c", expires_at=now + timedelta(days=1)
    )

    assert list(File.objects.expired(now=now)) == [old]
    assert str(old) == f"{old.id} (a)"


def test_ids_made_in_a_burst_sort_in_creation_order() -> None:
    ids = [new_batch_request_id() for _ in range(2_000)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith("batch_req_")


# --- Endings decided here reach the event log and the result handlers ----------------------


def handler_tasks() -> list[tuple[str, tuple[Any, ...]]]:
    return [
        (task.task["func"], task.task["args"])
        for task in OrmQ.objects.filter(key="cpu")
        if task.task["func"] == "batches.handlers.handler_run"
    ]


@override_settings(BATCH_RESULT_HANDLERS=["batches.webhooks.handle_batch_terminal"])
def test_a_batch_failing_validation_is_logged_and_handed_to_the_result_handlers(
    make_batch: MakeBatch, django_capture_on_commit_callbacks: Any
) -> None:
    batch = make_batch(input_file_id="file-missing")

    with django_capture_on_commit_callbacks(execute=True):
        services.batch_validate(batch_id=batch.id)

    assert [(e.kind, e.data) for e in BatchEvent.objects.filter(batch=batch)] == [
        ("validation_failed", {"errors": 1})
    ]
    assert handler_tasks() == [
        ("batches.handlers.handler_run", ("batches.webhooks.handle_batch_terminal", batch.id, 1))
    ]


def test_a_validated_batch_is_logged_and_not_handed_to_the_result_handlers(
    make_file: Callable[..., File],
    make_batch: MakeBatch,
    registered_model: RegisteredModel,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(input_file_id=make_file(jsonl([chat_line("a")])).id)

    with django_capture_on_commit_callbacks(execute=True):
        services.batch_validate(batch_id=batch.id)

    [event] = BatchEvent.objects.filter(batch=batch)
    assert (event.kind, event.data) == ("validated", {"requests": 1, "model": "tiny-chat"})
    assert handler_tasks() == []


@pytest.mark.parametrize(
    ("status", "fields", "ended"),
    [
        ("validating", {}, True),
        ("in_progress", {"lease_owner": "gpu-1"}, False),  # the worker ends it, and says so
    ],
)
def test_a_cancel_that_ends_the_batch_at_once_reaches_the_result_handlers(
    make_batch: MakeBatch,
    django_capture_on_commit_callbacks: Any,
    status: str,
    fields: dict[str, Any],
    ended: bool,
) -> None:
    batch = make_batch(status, **fields)

    with django_capture_on_commit_callbacks(execute=True):
        services.batch_cancel(batch=batch)

    kinds = list(BatchEvent.objects.filter(batch=batch).values_list("kind", flat=True))
    assert kinds == (["cancelled"] if ended else [])
    assert len(handler_tasks()) == (len(settings.BATCH_RESULT_HANDLERS) if ended else 0)


def test_a_batch_cancelled_while_its_bad_file_was_read_is_not_failed(
    make_batch: MakeBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(input_file_id="file-missing")
    check = services._batch_input_check

    def cancelled_meanwhile(batch: Batch) -> Any:
        result = check(batch)
        services.batch_cancel(batch=Batch.objects.get(pk=batch.pk))
        return result

    monkeypatch.setattr(services, "_batch_input_check", cancelled_meanwhile)

    assert services.batch_validate(batch_id=batch.id).status == Batch.Status.CANCELLED
    kinds = list(BatchEvent.objects.filter(batch=batch).values_list("kind", flat=True))
    assert kinds == ["cancelled"]
