"""Shared helpers of the reliability suite: private file storage, uploads, batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from inference.models import RegisteredModel


@pytest.fixture(autouse=True)
def private_storage(tmp_path: Path, settings: Any) -> Path:
    """Each test stores files under its own directory, so blobs can be checked and never leak."""
    files = tmp_path / "storage"
    files.mkdir()
    settings.MEDIA_ROOT = str(files)
    return files


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> None:
    """Rate-limit counters live in the process-wide cache, keyed by key pk, which tests reuse."""
    cache.clear()


@pytest.fixture
def second_model(db: None) -> RegisteredModel:
    return RegisteredModel.objects.create(
        name="tiny-chat-2", source="/nonexistent", engine_args={"max_model_len": 512}
    )


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(
    api: APIClient, content: bytes, *, filename: str = "input.jsonl", **fields: Any
) -> dict[str, Any]:
    """POST /v1/files with purpose batch (unless told otherwise); returns the file object."""
    data = {"file": SimpleUploadedFile(filename, content), "purpose": "batch", **fields}
    response = api.post("/v1/files", data, format="multipart")
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def create_batch(api: APIClient, file_id: str, **fields: Any) -> dict[str, Any]:
    response = api.post(
        "/v1/batches",
        {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **fields,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body
