"""The official openai SDK, unchanged, against a live test server.

No django-q2 cluster runs here: where a test needs a batch validated it calls the service the
validation task calls, as the CPU worker would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.core.signals import request_started
from django.test import override_settings
from pytest_django.live_server_helper import LiveServer

from batches import services
from batches.models import Batch
from inference.models import RegisteredModel
from tests.batches.conftest import jsonl
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(live_server: LiveServer, owner_key: str) -> Iterator[openai.OpenAI]:
    # Closed after the test: a kept-alive HTTP connection would keep a server thread, and its
    # database connection, open past the test database's teardown.
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=owner_key, max_retries=2) as sdk:
        yield sdk


@pytest.fixture
def requests_seen() -> Iterator[list[object]]:
    """Every request the live server starts, to count the SDK's retries."""
    seen: list[object] = []

    def count(sender: object, **kwargs: Any) -> None:
        seen.append(sender)

    request_started.connect(count)
    yield seen
    request_started.disconnect(count)


INPUT = jsonl([chat_line("q1"), chat_line("q2"), chat_line("q3")])


# --- Files ----------------------------------------------------------------------------------


def test_the_sdk_uploads_retrieves_downloads_and_deletes_a_file(sdk: openai.OpenAI) -> None:
    uploaded = sdk.files.create(
        file=("requests.jsonl", INPUT),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )

    assert isinstance(uploaded, openai.types.FileObject)
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == (
        "requests.jsonl",
        len(INPUT),
        "batch",
    )
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert sdk.files.retrieve(uploaded.id) == uploaded
    assert sdk.files.content(uploaded.id).read() == INPUT

    deleted = sdk.files.delete(uploaded.id)

    assert deleted == openai.types.FileDeleted(id=uploaded.id, object="file", deleted=True)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.files.retrieve(uploaded.id)
    assert raised.value.status_code == 404
    assert raised.value.param == "id"


def test_the_sdk_pages_through_files_across_pages(sdk: openai.OpenAI) -> None:
    ids = [sdk.files.create(file=(f"{i}.jsonl", INPUT), purpose="batch").id for i in range(5)]
    sdk.files.create(file=("notes.txt", b"notes"), purpose="user_data")

    first_page = sdk.files.list(limit=2, purpose="batch")
    every = [file.id for file in sdk.files.list(limit=2, purpose="batch")]  # auto-pagination

    assert [file.id for file in first_page.data] == ids[:-3:-1]
    assert first_page.has_next_page()
    assert every == ids[::-1]
    assert [f.id for f in sdk.files.list(order="asc", purpose="batch")] == ids


def test_the_sdk_sees_a_413_for_a_batch_file_over_the_limit(sdk: openai.OpenAI) -> None:
    with (
        override_settings(BATCH_MAX_INPUT_FILE_BYTES=10),
        pytest.raises(openai.APIStatusError) as raised,
    ):
        sdk.files.create(file=("big.jsonl", INPUT), purpose="batch")

    assert raised.value.status_code == 413
    assert (raised.value.code, raised.value.param) == ("file_too_large", "file")


def test_the_sdk_sees_a_413_when_an_upload_is_stopped_mid_stream(sdk: openai.OpenAI) -> None:
    with (
        override_settings(BATCH_MAX_UPLOAD_BYTES=1000),
        pytest.raises(openai.APIStatusError) as raised,
    ):
        sdk.files.create(file=("big.jsonl", b"x" * 20_000), purpose="user_data")

    assert raised.value.status_code == 413


# --- Batches --------------------------------------------------------------------------------


def test_the_sdk_creates_retrieves_lists_and_cancels_batches(
    sdk: openai.OpenAI, registered_model: RegisteredModel
) -> None:
    file = sdk.files.create(file=("in.jsonl", INPUT), purpose="batch")

    created = sdk.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "alpha"},
        output_expires_after={"anchor": "created_at", "seconds": 7200},
        extra_body={"priority": 3},
    )

    assert isinstance(created, openai.types.Batch)
    assert created.status == "validating"
    assert created.metadata == {"project": "alpha"}
    assert Batch.objects.get(pk=created.id).priority == 3

    services.batch_validate(batch_id=created.id)
    validated = sdk.batches.retrieve(created.id)
    assert validated.status == "in_progress"
    assert validated.model == "tiny-chat"
    assert validated.request_counts is not None and validated.request_counts.total == 3

    second = sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    third = sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert [b.id for b in sdk.batches.list(limit=2)] == [third.id, second.id, created.id]

    cancelled = sdk.batches.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelling_at is not None and cancelled.cancelled_at is not None
    assert sdk.batches.cancel(created.id) == cancelled  # idempotent


def test_the_sdk_gets_a_conflict_for_an_ended_batch_and_does_not_retry_it(
    sdk: openai.OpenAI, owner: Any, requests_seen: list[object]
) -> None:
    batch = services.batch_create(
        owner=owner,
        input_file_id="file-x",
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    services.batch_validate(batch_id=batch.id)  # the file does not exist: failed
    requests_seen.clear()

    with pytest.raises(openai.ConflictError) as raised:
        sdk.batches.cancel(batch.id)

    assert raised.value.status_code == 409
    assert raised.value.message.endswith("Cannot cancel a batch with status 'failed'.")
    assert len(requests_seen) == 1  # x-should-retry: false, despite max_retries=2
    failed = sdk.batches.retrieve(batch.id)
    assert failed.errors is not None and failed.errors.data is not None
    assert failed.errors.data[0].param == "file_id"


def test_the_sdk_gets_typed_errors_with_param_and_code(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        sdk.batches.create(
            input_file_id="file-x",
            # Not one of the SDK's endpoint literals, on purpose: the server's 400 is under test.
            endpoint="/v1/x",  # type: ignore[arg-type]
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError) as bad_window:
        sdk.batches.create(
            input_file_id="file-x",
            endpoint="/v1/embeddings",
            # The SDK's type allows only "24h"; 48h is sent to see the server refuse it.
            completion_window="48h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError) as bad_metadata:
        sdk.batches.create(
            input_file_id="file-x",
            endpoint="/v1/embeddings",
            completion_window="24h",
            # Metadata values are strings to the SDK; a list is sent to see the server refuse it.
            metadata={"tags": ["a"]},  # type: ignore[dict-item]
        )
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.batches.retrieve("batch_nope")

    assert (bad_endpoint.value.param, bad_endpoint.value.code) == ("endpoint", "invalid_value")
    assert bad_endpoint.value.body == {
        "message": "Invalid value: '/v1/x'. Supported values are: '/v1/chat/completions', "
        "'/v1/completions' and '/v1/embeddings'.",
        "type": "invalid_request_error",
        "param": "endpoint",
        "code": "invalid_value",
    }
    assert (bad_window.value.param, bad_window.value.code) == ("completion_window", "invalid_value")
    assert (bad_metadata.value.param, bad_metadata.value.code) == ("metadata.tags", "invalid_type")
    assert unknown.value.status_code == 404
    assert unknown.value.message.endswith("No batch found with id 'batch_nope'.")


def test_the_sdk_gets_an_authentication_error_for_a_wrong_key(
    live_server: LiveServer, owner_key: str
) -> None:
    with (
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=owner_key + "x") as sdk,
        pytest.raises(openai.AuthenticationError) as raised,
    ):
        sdk.files.list()

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


# --- Models ---------------------------------------------------------------------------------


def test_the_sdk_lists_and_retrieves_models(
    sdk: openai.OpenAI, registered_model: RegisteredModel
) -> None:
    assert [model.id for model in sdk.models.list()] == ["tiny-chat"]
    assert sdk.models.retrieve("tiny-chat").owned_by == "batch-server"
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.models.retrieve("gpt-9")
    assert raised.value.code == "model_not_found"
