"""Per-key rate limits and queue cap (OpenAI's 429), and CORS closed unless opened."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from batches.api.throttles import queued_requests_error
from batches.auth import verified_keys_forget
from batches.models import Batch

pytestmark = pytest.mark.django_db


def upload(api: APIClient) -> int:
    file = SimpleUploadedFile("in.jsonl", b"{}\n", content_type="application/jsonl")
    return api.post("/v1/files", {"file": file, "purpose": "batch"}).status_code


def create_batch(api: APIClient) -> object:
    return api.post(
        "/v1/batches",
        {
            "input_file_id": "file-any",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        format="json",
    )


def test_uploads_past_the_rate_get_openais_429(
    api: APIClient, other_api: APIClient, settings: Settings
) -> None:
    settings.API_RATE_LIMITS = {"uploads": "2/minute", "batch_creates": ""}
    assert [upload(api), upload(api)] == [200, 200]
    response = api.post(
        "/v1/files", {"file": SimpleUploadedFile("x.jsonl", b"{}\n"), "purpose": "batch"}
    )
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "requests"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["param"] is None
    assert 1 <= int(response["retry-after"]) <= 60
    # Reading is not limited, and the limit is per key.
    assert api.get("/v1/files").status_code == 200
    assert upload(other_api) == 200


def test_the_count_is_shared_by_every_web_process(api: APIClient, settings: Settings) -> None:
    settings.API_RATE_LIMITS = {"uploads": "1/minute", "batch_creates": ""}
    assert upload(api) == 200
    # Another web process has none of this one's memory, only the same database.
    caches["default"].clear()
    verified_keys_forget()

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM batch_throttle_cache")
        assert cursor.fetchone() == (1,)
    assert upload(api) == 429


def test_batch_creation_past_the_rate_gets_openais_429(api: APIClient, settings: Settings) -> None:
    settings.API_RATE_LIMITS = {"uploads": "", "batch_creates": "1/hour"}
    assert create_batch(api).status_code == 200  # type: ignore[attr-defined]
    response = create_batch(api)
    assert response.status_code == 429  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "requests"
    assert int(response["retry-after"]) > 60  # type: ignore[index]


def test_an_empty_rate_means_no_limit(api: APIClient, settings: Settings) -> None:
    settings.API_RATE_LIMITS = {"uploads": "", "batch_creates": ""}
    assert {upload(api) for _ in range(5)} == {200}


def queued(owner: User, requests: int) -> Batch:
    return Batch.objects.create(
        owner=owner,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=Batch.Status.IN_PROGRESS,
        model="tiny-chat",
        request_total=requests,
    )


def test_a_full_queue_refuses_new_batches_with_openais_429(
    api: APIClient, other_api: APIClient, owner: User, settings: Settings
) -> None:
    settings.BATCH_MAX_QUEUED_REQUESTS_PER_OWNER = 100
    queued(owner, 100)
    response = create_batch(api)
    assert response.status_code == 429  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert "100" in error["message"]
    assert response["retry-after"] == "60"  # type: ignore[index]
    assert create_batch(other_api).status_code == 200  # type: ignore[attr-defined]


def test_validation_names_a_batch_that_would_overflow_the_queue(
    owner: User, settings: Settings
) -> None:
    settings.BATCH_MAX_QUEUED_REQUESTS_PER_OWNER = 100
    queued(owner, 60)
    new = queued(owner, 0)
    assert queued_requests_error(batch=new, request_total=40) is None
    error = queued_requests_error(batch=new, request_total=41)
    assert error is not None and error["code"] == "request_limit_exceeded"


def test_cors_is_closed_by_default(client: Client) -> None:
    response = client.options(
        "/v1/batches",
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )
    assert "access-control-allow-origin" not in response


def test_cors_opens_to_the_listed_origins(client: Client, settings: Settings) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    preflight = client.options(
        "/v1/batches",
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )
    assert preflight["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in preflight["access-control-allow-headers"]
    answer = client.get("/v1/models", HTTP_ORIGIN="https://app.example.com")
    assert "x-request-id" in answer["access-control-expose-headers"]
    stranger = client.options(
        "/v1/batches",
        HTTP_ORIGIN="https://evil.example.net",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )
    assert "access-control-allow-origin" not in stranger
