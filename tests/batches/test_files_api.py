"""POST/GET/DELETE /v1/files: OpenAI's FileObject, FileDeleted and list shapes, limits, errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import openai.types
import pytest
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.http import FileResponse
from django.test import override_settings
from rest_framework.test import APIClient

from batches import services
from batches.api.errors import PayloadTooLargeError
from batches.api.uploads import UploadSizeLimitHandler
from batches.models import Batch, File
from tests.batches.conftest import upload

pytestmark = pytest.mark.django_db

CONTENT = b'{"custom_id": "a"}\n'


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def test_it_uploads_a_file_and_answers_every_field_of_the_sdk_file_object(api: APIClient) -> None:
    response = upload(api, CONTENT, filename="requests.jsonl")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == set(openai.types.FileObject.model_fields)
    file = openai.types.FileObject.model_validate(body)
    assert file.id.startswith("file-")
    assert file.object == "file"
    assert file.bytes == len(CONTENT)
    assert file.filename == "requests.jsonl"
    assert file.purpose == "batch"
    assert file.status == "processed"
    assert file.expires_at is None
    assert file.status_details is None
    assert File.objects.get(pk=file.id).content.read() == CONTENT


def test_it_sets_expires_at_from_the_sdks_expires_after_form_fields(api: APIClient) -> None:
    response = upload(
        api, CONTENT, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"}
    )

    assert response.status_code == 200
    assert response.json()["expires_at"] == response.json()["created_at"] + 7200


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        (
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "7200"},
            "expires_after.anchor",
            "invalid_value",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            "expires_after.seconds",
            "invalid_value",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
            "expires_after.seconds",
            "invalid_value",
        ),
        (
            {"expires_after[seconds]": "7200"},
            "expires_after.anchor",
            "missing_required_parameter",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"},
            "expires_after.seconds",
            "invalid_type",
        ),
    ],
)
def test_it_rejects_a_bad_expiration_policy(
    api: APIClient, fields: dict[str, str], param: str, code: str
) -> None:
    response = upload(api, CONTENT, **fields)

    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert not File.objects.exists()


def test_it_words_the_expiry_range_error_as_openai_does(api: APIClient) -> None:
    response = upload(
        api, CONTENT, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}
    )

    assert error_of(response)["message"] == (
        "Invalid 'expires_after.seconds': integer below minimum value or above maximum value. "
        "Expected a value between 3600 and 2592000, but got 60 instead."
    )


def test_it_rejects_an_unknown_purpose_naming_the_supported_ones(api: APIClient) -> None:
    response = upload(api, CONTENT, purpose="batch_output")

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "purpose"
    assert error["code"] == "invalid_value"
    assert error["message"] == (
        "Invalid value: 'batch_output'. Supported values are: 'assistants', 'batch', "
        "'fine-tune', 'vision', 'user_data' and 'evals'."
    )


def test_it_requires_the_file_part(api: APIClient) -> None:
    response = api.post("/v1/files", {"purpose": "batch"}, format="multipart")

    assert response.status_code == 400
    assert error_of(response) == {
        "message": "Missing required parameter: 'file'.",
        "type": "invalid_request_error",
        "param": "file",
        "code": "missing_required_parameter",
    }


def test_it_requires_a_purpose(api: APIClient) -> None:
    response = api.post(
        "/v1/files", {"file": TemporaryUploadedFile("x", "text/plain", 0, None)}, format="multipart"
    )

    assert response.status_code == 400
    assert error_of(response)["param"] == "purpose"


def test_it_refuses_a_json_body_on_upload(api: APIClient) -> None:
    response = api.post("/v1/files", {"purpose": "batch"}, format="json")

    assert response.status_code == 415
    assert error_of(response)["type"] == "invalid_request_error"


def test_it_keeps_only_the_last_component_of_a_client_filename(api: APIClient) -> None:
    response = upload(api, CONTENT, filename="../../etc/pass\x07wd")

    assert response.json()["filename"] == "passwd"


def test_it_spools_large_uploads_to_disk_instead_of_memory(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[UploadedFile[bytes]] = []
    create = services.file_create

    def spy(**kwargs: Any) -> File:
        seen.append(kwargs["upload"])
        return create(**kwargs)

    monkeypatch.setattr(services, "file_create", spy)
    big = b"x" * (3 * 1024 * 1024)

    with override_settings(FILE_UPLOAD_MAX_MEMORY_SIZE=1024 * 1024):
        response = upload(api, big)

    assert response.status_code == 200
    assert isinstance(seen[0], TemporaryUploadedFile)
    assert response.json()["bytes"] == len(big)


@override_settings(BATCH_MAX_INPUT_FILE_BYTES=100)
def test_it_refuses_a_batch_input_file_over_the_limit_with_413(
    api: APIClient, private_storage: Path
) -> None:
    response = upload(api, b"x" * 101)

    assert response.status_code == 413
    error = error_of(response)
    assert (error["param"], error["code"]) == ("file", "file_too_large")
    assert "at most 100 bytes" in error["message"]
    assert not File.objects.exists()
    assert not private_storage.exists() or not any(private_storage.rglob("*.*"))


@override_settings(BATCH_MAX_INPUT_FILE_BYTES=100)
def test_it_applies_the_batch_input_limit_to_batch_files_only(api: APIClient) -> None:
    assert upload(api, b"x" * 101, purpose="user_data").status_code == 200


@override_settings(BATCH_MAX_UPLOAD_BYTES=1000)
def test_it_aborts_an_upload_over_the_upload_limit(api: APIClient) -> None:
    response = upload(api, b"x" * 5000)

    assert response.status_code == 413
    assert error_of(response)["code"] == "file_too_large"
    assert not File.objects.exists()


@override_settings(BATCH_MAX_UPLOAD_BYTES=1000)
def test_it_refuses_an_upload_whose_declared_length_is_over_the_limit(api: APIClient) -> None:
    response = upload(api, b"x" * 200_000)

    assert response.status_code == 413


@override_settings(BATCH_MAX_UPLOAD_BYTES=1000)
def test_the_upload_limit_stops_the_stream_at_the_chunk_that_crosses_it() -> None:
    handler = UploadSizeLimitHandler(None, limit=1000)
    received = []

    with pytest.raises(PayloadTooLargeError):
        for start in range(0, 10_000, 400):
            received.append(handler.receive_data_chunk(b"x" * 400, start))

    assert len(received) == 2  # 800 bytes passed on, the third chunk (to 1,200) refused
    handler.file_complete(800)  # a file that stayed under the limit completes quietly


def test_it_downloads_the_content_as_an_attachment(api: APIClient) -> None:
    file_id = upload(api, CONTENT, filename="in.jsonl").json()["id"]

    response = api.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="application/binary")

    assert response.status_code == 200
    download = cast(FileResponse, response)  # the test client returns the view's own response
    assert download.getvalue() == CONTENT
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="in.jsonl"'


def test_it_answers_a_missing_download_in_json_whatever_the_accept_header(api: APIClient) -> None:
    response = api.get("/v1/files/file-nope/content", HTTP_ACCEPT="application/binary")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["message"] == "No such File object: file-nope"


def test_it_retrieves_a_file(api: APIClient) -> None:
    created = upload(api, CONTENT).json()

    response = api.get(f"/v1/files/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_it_answers_404_for_an_unknown_file(api: APIClient) -> None:
    response = api.get("/v1/files/file-nope")

    assert response.status_code == 404
    assert error_of(response) == {
        "message": "No such File object: file-nope",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }


def test_it_deletes_a_file_and_then_its_content(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    file_id = upload(api, CONTENT).json()["id"]
    stored = Path(File.objects.get(pk=file_id).content.path)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    openai.types.FileDeleted.model_validate(response.json())
    assert api.get(f"/v1/files/{file_id}").status_code == 404
    assert not stored.exists()


def test_it_refuses_to_delete_the_input_of_a_batch_that_has_not_ended(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    file_id = upload(api, CONTENT).json()["id"]
    batch = make_batch("in_progress", input_file_id=file_id)

    response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 409
    assert response["x-should-retry"] == "false"
    error = error_of(response)
    assert (error["param"], error["code"]) == ("file_id", "file_in_use")
    assert batch.id in error["message"]
    assert File.objects.filter(pk=file_id).exists()


def test_another_owners_batch_naming_the_file_neither_blocks_the_delete_nor_leaks(
    api: APIClient, other_api: APIClient
) -> None:
    file_id = upload(api, CONTENT).json()["id"]
    # Accepted as OpenAI accepts it; validation (not run here) would fail it later.
    theirs = other_api.post(
        "/v1/batches",
        {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        format="json",
    )
    assert theirs.status_code == 200
    assert theirs.json()["status"] == "validating"

    response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 200
    assert theirs.json()["id"] not in response.content.decode()
    assert not File.objects.filter(pk=file_id).exists()


def test_it_deletes_the_input_of_a_batch_that_has_ended(
    api: APIClient, make_batch: Callable[..., Batch]
) -> None:
    file_id = upload(api, CONTENT).json()["id"]
    make_batch("completed", input_file_id=file_id)

    assert api.delete(f"/v1/files/{file_id}").status_code == 200


# --- GET /v1/files --------------------------------------------------------------------------


@pytest.fixture
def five_files(api: APIClient) -> list[str]:
    """Five uploads, oldest first; the second and fourth with purpose user_data."""
    purposes = ["batch", "user_data", "batch", "user_data", "batch"]
    return [upload(api, CONTENT, purpose=purpose).json()["id"] for purpose in purposes]


def test_it_lists_files_newest_first_in_openais_list_shape(
    api: APIClient, five_files: list[str]
) -> None:
    body = api.get("/v1/files").json()

    assert set(body) == {"object", "data", "first_id", "last_id", "has_more"}
    assert body["object"] == "list"
    assert [file["id"] for file in body["data"]] == five_files[::-1]
    assert (body["first_id"], body["last_id"], body["has_more"]) == (
        five_files[-1],
        five_files[0],
        False,
    )
    for file in body["data"]:
        openai.types.FileObject.model_validate(file)


def test_it_pages_files_with_after_and_limit(api: APIClient, five_files: list[str]) -> None:
    first = api.get("/v1/files", {"limit": 2}).json()
    second = api.get("/v1/files", {"limit": 2, "after": first["last_id"]}).json()
    third = api.get("/v1/files", {"limit": 2, "after": second["last_id"]}).json()

    assert [f["id"] for f in first["data"] + second["data"] + third["data"]] == five_files[::-1]
    assert [first["has_more"], second["has_more"], third["has_more"]] == [True, True, False]


def test_it_answers_an_empty_page_past_the_end(api: APIClient, five_files: list[str]) -> None:
    body = api.get("/v1/files", {"after": five_files[0]}).json()

    assert body == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_it_lists_files_oldest_first_on_request(api: APIClient, five_files: list[str]) -> None:
    first = api.get("/v1/files", {"order": "asc", "limit": "3"}).json()
    rest = api.get("/v1/files", {"order": "asc", "after": first["last_id"]}).json()

    assert [f["id"] for f in first["data"] + rest["data"]] == five_files
    assert first["has_more"] is True


def test_it_filters_files_by_purpose(api: APIClient, five_files: list[str]) -> None:
    body = api.get("/v1/files", {"purpose": "user_data"}).json()

    assert [f["id"] for f in body["data"]] == [five_files[3], five_files[1]]


def test_it_accepts_a_limit_of_10000(api: APIClient, five_files: list[str]) -> None:
    assert len(api.get("/v1/files", {"limit": 10_000}).json()["data"]) == 5


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ({"limit": 0}, "limit", "invalid_value"),
        ({"limit": 10_001}, "limit", "invalid_value"),
        ({"limit": "many"}, "limit", "invalid_type"),
        ({"order": "newest"}, "order", "invalid_value"),
    ],
)
def test_it_rejects_bad_list_parameters(
    api: APIClient, query: dict[str, Any], param: str, code: str
) -> None:
    response = api.get("/v1/files", query)

    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)


def test_it_words_an_out_of_range_limit_as_openai_does(api: APIClient) -> None:
    response = api.get("/v1/files", {"limit": 0})

    assert error_of(response)["message"] == (
        "Invalid 'limit': integer below minimum value or above maximum value. "
        "Expected a value between 1 and 10000, but got 0 instead."
    )


def test_it_writes_a_generated_file_from_a_stream(owner: Any) -> None:
    file = services.file_create_generated(
        owner=owner,
        purpose=File.Purpose.BATCH_OUTPUT,
        filename="batch_x_output.jsonl",
        content=io.BytesIO(b"line\n" * 3),
    )

    assert file.bytes == 15
    assert file.content.read() == b"line\n" * 3
