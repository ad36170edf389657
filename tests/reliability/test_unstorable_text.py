"""Text that cannot be stored or sent: a clear 4xx everywhere, never a 500.

- NUL characters in paths, queries and metadata. PostgreSQL text cannot hold one: a lookup or a
  save with one fails in the database (SQLite takes it). The fuzzer found ids with one in the
  path answering 500 on PostgreSQL only. These run on both, and must answer alike.
- Lone surrogates in JSON bodies (``"\\ud800"``): valid JSON, but no UTF-8 text can hold them,
  and a response that showed one failed to encode.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from batches.models import Batch
from tests.conftest import chat_line
from tests.reliability.conftest import create_batch, jsonl, upload

pytestmark = pytest.mark.django_db

NUL = "\x00"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/batches/batch_%00"),
        ("post", "/v1/batches/batch_%00/cancel"),
        ("get", "/v1/files/file-%00"),
        ("get", "/v1/files/file-%00/content"),
        ("delete", "/v1/files/file-%00"),
        ("get", "/v1/models/tiny%00chat"),
        ("get", "/v1/webhook_endpoints/we_%00"),
        ("post", "/v1/webhook_endpoints/we_%00/rotate_secret"),
    ],
)
def test_an_id_with_a_nul_character_is_not_found(api: APIClient, method: str, path: str) -> None:
    response = getattr(api, method)(path)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"Invalid URL ({method.upper()} /v1/")


def test_the_key_is_checked_before_the_nul_character(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/v1/batches/batch_%00").status_code == 401
    assert anonymous_api.get("/v1/files?after=file-%00").status_code == 401


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/files?purpose=%00", "purpose"),
        ("/v1/files?after=file-%00", "after"),
        ("/v1/files?order=desc%00", "order"),
        ("/v1/batches?after=batch_%00", "after"),
        ("/v1/batches?limit=1%00", "limit"),
        ("/v1/webhook_endpoints?after=%00", "after"),
        ("/v1/models?x%00=1", "x\\u0000"),
    ],
)
def test_a_query_parameter_with_a_nul_character_is_refused(
    api: APIClient, path: str, param: str
) -> None:
    response = api.get(path)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"Invalid value for '{param}': null characters are not allowed.",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }


@pytest.mark.parametrize("metadata", [{"k": f"a{NUL}b"}, {f"k{NUL}": "v"}])
def test_metadata_with_a_nul_character_is_refused_and_nothing_is_stored(
    api: APIClient, registered_model: Any, metadata: dict[str, str]
) -> None:
    file_id = upload(api, jsonl([chat_line("a")]))["id"]

    response = api.post(
        "/v1/batches",
        {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        },
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "metadata"
    assert response.json()["error"]["code"] == "invalid_value"
    assert not Batch.objects.exists()
    # The same request without it goes through.
    assert create_batch(api, file_id, metadata={"k": "ab"})["metadata"] == {"k": "ab"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/operator/batches/batch_%00", 404),
        ("/operator/batches/batch_%00/progress", 404),
        ("/admin/batches/batch/batch_%00/change/", 404),
        ("/operator/history?model=%00", 400),
        ("/operator/history?owner=a%00", 400),
        ("/curation/batches/?batch=%00", 400),
        ("/admin/batches/batch/?q=%00", 400),
    ],
)
def test_pages_answer_a_nul_character_with_a_client_error(
    staff: User, path: str, status: int
) -> None:
    client = Client()
    client.force_login(staff)

    assert client.get(path).status_code == status


def test_pages_without_one_are_untouched(staff: User) -> None:
    client = Client()
    client.force_login(staff)

    assert client.get("/operator/history?model=tiny-chat").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batches", '{"input_file_id": "file-a", "endpoint": "/v1/chat/completions\\ud800"}'),
        ("/v1/batches", '{"input_file_id": "file-a", "metadata": {"k": "\\udfff"}}'),
        ("/v1/batches", '{"input_file_id": "file-a", "metadata": {"\\ud800": "v"}}'),
        ("/v1/webhook_endpoints", '{"url": "https://example.com/", "name": "\\ud800"}'),
    ],
)
def test_a_json_body_with_a_lone_surrogate_is_refused_as_unparseable(
    api: APIClient, path: str, body: str
) -> None:
    response = api.post(path, data=body, content_type="application/json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("We could not parse the JSON body of your request")
    assert "lone surrogate" in error["message"]
    assert not Batch.objects.exists()


def test_a_surrogate_pair_is_ordinary_text(api: APIClient, registered_model: Any) -> None:
    file_id = upload(api, jsonl([chat_line("a")]))["id"]
    # \ud83d\ude00 is one character, U+1F600, as JSON spells it outside the BMP.
    body = (
        f'{{"input_file_id": "{file_id}", "endpoint": "/v1/chat/completions", '
        '"completion_window": "24h", "metadata": {"mood": "\\ud83d\\ude00"}}'
    )

    response = api.post("/v1/batches", data=body, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response.json()["metadata"] == {"mood": "\U0001f600"}
