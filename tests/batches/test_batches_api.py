"""POST/GET /v1/batches and cancel: OpenAI's Batch object, parameter errors and the cancel rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai.types
import pytest
from django.test import override_settings
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework import serializers
from rest_framework.test import APIClient

from batches.api.serializers import BatchObjectSerializer, batch_object
from batches.models import Batch
from inference.models import BatchChunk

pytestmark = pytest.mark.django_db

CREATE = {
    "input_file_id": "file-abc",
    "endpoint": "/v1/chat/completions",
    "completion_window": "24h",
}


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def create(api: APIClient, **fields: Any) -> Any:
    return api.post("/v1/batches", {**CREATE, **fields}, format="json")


# --- POST /v1/batches -----------------------------------------------------------------------


def test_it_creates_a_validating_batch_with_every_field_of_the_sdk_batch(api: APIClient) -> None:
    response = create(api, metadata={"project": "alpha"})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == set(openai.types.Batch.model_fields)
    batch = openai.types.Batch.model_validate(body)
    assert batch.id.startswith("batch_")
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.input_file_id == "file-abc"
    assert batch.completion_window == "24h"
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.metadata == {"project": "alpha"}
    assert batch.model is None
    assert batch.errors is None
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.usage is not None
    assert batch.usage.model_dump() == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    for stamp in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at"):
        assert body[stamp] is None
    assert body["cancelling_at"] is None
    assert body["cancelled_at"] is None


def test_it_enqueues_the_validation_on_the_cpu_cluster_after_commit(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        batch_id = create(api).json()["id"]

    assert len(callbacks) == 1
    queued = [task.task for task in OrmQ.objects.filter(key="cpu")]
    assert [(t["func"], t["args"]) for t in queued] == [
        ("batches.tasks.validate_batch", (batch_id,))
    ]


def test_it_accepts_an_input_file_id_that_does_not_exist_as_openai_does(api: APIClient) -> None:
    response = create(api, input_file_id="file-does-not-exist")

    assert response.status_code == 200
    assert response.json()["status"] == "validating"


def test_it_stores_the_output_expiration_and_the_priority_extra_field(api: APIClient) -> None:
    response = create(
        api, output_expires_after={"anchor": "created_at", "seconds": 7200}, priority=5
    )

    batch = Batch.objects.get(pk=response.json()["id"])
    assert batch.output_expires_after_seconds == 7200
    assert batch.priority == 5


def test_it_rejects_an_unsupported_endpoint_in_openais_words(api: APIClient) -> None:
    error = error_of(create(api, endpoint="/v1/x"))

    assert error == {
        "message": "Invalid value: '/v1/x'. Supported values are: '/v1/chat/completions', "
        "'/v1/completions' and '/v1/embeddings'.",
        "type": "invalid_request_error",
        "param": "endpoint",
        "code": "invalid_value",
    }


def test_it_rejects_a_completion_window_other_than_24h(api: APIClient) -> None:
    error = error_of(create(api, completion_window="48h"))

    assert error == {
        "message": "Invalid value: '48h'. Supported values are: '24h'.",
        "type": "invalid_request_error",
        "param": "completion_window",
        "code": "invalid_value",
    }


@override_settings(BATCH_COMPLETION_WINDOWS=["24h", "72h"])
def test_it_accepts_other_windows_when_the_setting_allows_them(api: APIClient) -> None:
    body = create(api, completion_window="72h").json()

    assert body["completion_window"] == "72h"
    assert body["expires_at"] == body["created_at"] + 72 * 3600


@pytest.mark.parametrize("missing", ["input_file_id", "endpoint", "completion_window"])
def test_it_requires_each_parameter(api: APIClient, missing: str) -> None:
    body = {key: value for key, value in CREATE.items() if key != missing}

    error = error_of(api.post("/v1/batches", body, format="json"))

    assert error == {
        "message": f"Missing required parameter: '{missing}'.",
        "type": "invalid_request_error",
        "param": missing,
        "code": "missing_required_parameter",
    }


def test_it_accepts_metadata_at_the_limits(api: APIClient) -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}

    response = create(api, metadata=metadata)

    assert response.status_code == 200
    assert response.json()["metadata"] == metadata


def test_it_accepts_null_metadata(api: APIClient) -> None:
    assert create(api, metadata=None).json()["metadata"] is None


@pytest.mark.parametrize(
    ("metadata", "param", "code"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "object_above_max_properties"),
        ({"k" * 65: "v"}, "metadata", "invalid_value"),
        ({"note": "v" * 513}, "metadata.note", "string_above_max_length"),
        ({"count": 3}, "metadata.count", "invalid_type"),
        (["not", "an", "object"], "metadata", "invalid_type"),
    ],
)
def test_it_rejects_metadata_over_openais_limits(
    api: APIClient, metadata: Any, param: str, code: str
) -> None:
    error = error_of(create(api, metadata=metadata))

    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert not Batch.objects.exists()


def test_it_words_a_non_string_metadata_value_as_openai_does(api: APIClient) -> None:
    error = error_of(create(api, metadata={"tags": ["a", "b"]}))

    assert error == {
        "message": "Invalid type for 'metadata.tags': expected a string, but got an array instead.",
        "type": "invalid_request_error",
        "param": "metadata.tags",
        "code": "invalid_type",
    }


@pytest.mark.parametrize(
    ("value", "param", "code"),
    [
        ({"anchor": "last_active_at", "seconds": 7200}, "output_expires_after.anchor", None),
        ({"anchor": "created_at", "seconds": 10}, "output_expires_after.seconds", None),
        ({"anchor": "created_at"}, "output_expires_after.seconds", "missing_required_parameter"),
        ("soon", "output_expires_after", "invalid_type"),
    ],
)
def test_it_rejects_a_bad_output_expiration(
    api: APIClient, value: Any, param: str, code: str | None
) -> None:
    error = error_of(create(api, output_expires_after=value))

    assert error["param"] == param
    assert error["code"] == (code or "invalid_value")


@pytest.mark.parametrize(("priority", "code"), [(1001, "invalid_value"), ("high", "invalid_type")])
def test_it_rejects_a_priority_out_of_range(api: APIClient, priority: Any, code: str) -> None:
    error = error_of(create(api, priority=priority))

    assert (error["param"], error["code"]) == ("priority", code)


def test_it_answers_a_body_that_is_not_json_in_the_error_envelope(api: APIClient) -> None:
    response = api.post("/v1/batches", "{not json", content_type="application/json")

    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "parse_error"


# --- GET /v1/batches/{id} and GET /v1/batches -----------------------------------------------


@pytest.mark.parametrize("accept", ["text/html", "accept;", "image/*;q=x", ""])
def test_it_answers_json_whatever_the_accept_header_says(api: APIClient, accept: str) -> None:
    # OpenAI's API answers JSON to any Accept; a 406 was what schemathesis found here.
    created = create(api).json()

    response = api.get(f"/v1/batches/{created['id']}", HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["id"] == created["id"]


def test_an_unknown_format_parameter_is_still_not_found(api: APIClient) -> None:
    created = create(api).json()

    response = api.get(f"/v1/batches/{created['id']}?format=xml")

    assert response.status_code == 404


def test_it_retrieves_a_batch(api: APIClient) -> None:
    created = create(api).json()

    response = api.get(f"/v1/batches/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_it_shows_errors_model_and_counts_once_known(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    errors = {
        "object": "list",
        "data": [{"code": "invalid_url", "message": "m", "param": "url", "line": 3}],
    }
    batch = make_batch("failed", errors=errors, model="tiny-chat", request_total=4, input_tokens=7)

    body = api.get(f"/v1/batches/{batch.id}").json()

    parsed = openai.types.Batch.model_validate(body)
    assert body["errors"] == errors
    assert parsed.model == "tiny-chat"
    assert parsed.request_counts is not None and parsed.request_counts.total == 4
    assert parsed.usage is not None and parsed.usage.total_tokens == 7
    assert parsed.failed_at is not None


@pytest.mark.parametrize("status", [s for s, _ in Batch.Status.choices])
def test_the_batch_object_matches_the_declared_serializer_fields(
    make_batch: Callable[..., Batch], status: str
) -> None:
    # GET /v1/batches/{id} builds its answer by hand (batch_object); the OpenAPI schema comes
    # from BatchObjectSerializer's declared fields. The two must say the same thing.
    errors = {
        "object": "list",
        "data": [{"code": "invalid_url", "message": "m", "param": "url", "line": 3}],
    }
    batch = make_batch(
        status,
        errors=errors if status == "failed" else None,
        model="tiny-chat" if status != "validating" else "",
        metadata={"k": "v"},
        request_total=9,
        request_completed=5,
        request_failed=1,
        input_tokens=11,
        cached_tokens=2,
        output_tokens=13,
        reasoning_tokens=1,
        expires_at=timezone.now(),
    )
    batch.refresh_from_db()
    serializer = BatchObjectSerializer(batch)

    declared = serializers.Serializer.to_representation(serializer, batch)

    assert batch_object(batch) == json.loads(json.dumps(declared))
    assert serializer.data == batch_object(batch)


def test_it_answers_404_for_an_unknown_batch(api: APIClient) -> None:
    error = error_of(api.get("/v1/batches/batch_nope"), 404)

    assert error == {
        "message": "No batch found with id 'batch_nope'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.fixture
def batches_newest_first(make_batch: Callable[..., Batch]) -> list[str]:
    ids = [make_batch().id for _ in range(25)]
    return ids[::-1]


def test_it_lists_20_batches_newest_first_by_default(
    api: APIClient, batches_newest_first: list[str]
) -> None:
    body = api.get("/v1/batches").json()

    assert body["object"] == "list"
    assert [b["id"] for b in body["data"]] == batches_newest_first[:20]
    assert body["first_id"] == batches_newest_first[0]
    assert body["last_id"] == batches_newest_first[19]
    assert body["has_more"] is True


def test_it_pages_batches_with_after(api: APIClient, batches_newest_first: list[str]) -> None:
    first = api.get("/v1/batches", {"limit": 10}).json()
    second = api.get("/v1/batches", {"limit": 10, "after": first["last_id"]}).json()
    third = api.get("/v1/batches", {"limit": 10, "after": second["last_id"]}).json()
    past = api.get("/v1/batches", {"after": third["last_id"]}).json()

    seen = [b["id"] for page in (first, second, third) for b in page["data"]]
    assert seen == batches_newest_first
    assert third["has_more"] is False
    assert past == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_it_ignores_order_on_batches_which_are_always_newest_first(
    api: APIClient, batches_newest_first: list[str]
) -> None:
    body = api.get("/v1/batches", {"order": "asc", "limit": "100"}).json()

    assert [b["id"] for b in body["data"]] == batches_newest_first


@pytest.mark.parametrize("limit", [0, 101])
def test_it_limits_batch_pages_to_1_to_100(api: APIClient, limit: int) -> None:
    error = error_of(api.get("/v1/batches", {"limit": limit}))

    assert (error["param"], error["code"]) == ("limit", "invalid_value")
    assert "between 1 and 100" in error["message"]


# --- POST /v1/batches/{id}/cancel -----------------------------------------------------------


def cancel(api: APIClient, batch: Batch) -> Any:
    return api.post(f"/v1/batches/{batch.id}/cancel")


def test_it_cancels_a_validating_batch_at_once(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    batch = make_batch("validating")

    body = cancel(api, batch).json()

    assert body["status"] == "cancelled"
    assert body["cancelling_at"] is not None
    assert body["cancelled_at"] == body["cancelling_at"]


def test_it_cancels_a_queued_batch_that_no_worker_has_touched_at_once(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    batch = make_batch("in_progress")

    body = cancel(api, batch).json()

    assert body["status"] == "cancelled"
    assert body["cancelling_at"] is not None
    assert body["cancelled_at"] is not None


def test_it_asks_a_worker_holding_the_batch_to_stop(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    batch = make_batch(
        "in_progress",
        lease_owner="gpu-1",
        lease_expires_at=timezone.now() + timedelta(minutes=2),
    )

    body = cancel(api, batch).json()

    assert body["status"] == "cancelling"
    assert body["cancelling_at"] is not None
    assert body["cancelled_at"] is None


def test_it_asks_for_cancelling_when_chunks_have_already_run(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    batch = make_batch("in_progress", request_total=10)
    BatchChunk.objects.create(
        batch=batch, index=0, start_line=1, end_line=5, start_offset=0, end_offset=100
    )

    assert cancel(api, batch).json()["status"] == "cancelling"


@pytest.mark.parametrize("status", ["cancelling", "cancelled"])
def test_it_answers_a_repeated_cancel_unchanged(
    api: APIClient, make_batch: Callable[..., Batch], status: str
) -> None:
    batch = make_batch(status)
    before = api.get(f"/v1/batches/{batch.id}").json()

    response = cancel(api, batch)

    assert response.status_code == 200
    assert response.json() == before


@pytest.mark.parametrize("status", ["completed", "failed", "expired"])
def test_it_refuses_to_cancel_a_batch_that_has_ended(
    api: APIClient, make_batch: Callable[..., Batch], status: str
) -> None:
    batch = make_batch(status)

    response = cancel(api, batch)

    error = error_of(response, 409)
    assert error == {
        "message": f"Cannot cancel a batch with status '{status}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert response["x-should-retry"] == "false"
    batch.refresh_from_db()
    assert batch.status == status


def test_it_refuses_to_cancel_a_finalizing_batch(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    response = cancel(api, make_batch("finalizing"))

    assert "finalizing" in error_of(response, 409)["message"]
    assert response["x-should-retry"] == "false"


def test_it_answers_404_when_cancelling_an_unknown_batch(api: APIClient) -> None:
    error = error_of(api.post("/v1/batches/batch_nope/cancel"), 404)

    assert error["message"] == "No batch found with id 'batch_nope'."
