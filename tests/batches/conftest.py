"""Helpers for the Files/Batches API tests: private storage, uploads and batches in any state."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from batches import services
from batches.models import Batch, File


@pytest.fixture(autouse=True)
def private_storage(settings: LazySettings, tmp_path: Path) -> Path:
    """Every test stores its files under its own directory, never in var/files."""
    root = tmp_path / "files"
    settings.MEDIA_ROOT = str(root)
    return root


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: LazySettings) -> None:
    # The personas log in with passwords; the production hasher's cost buys nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def jsonl(lines: Iterable[Any]) -> bytes:
    """JSON Lines: dicts are dumped, bytes and str go in as they are (to write broken lines)."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(json.dumps(line).encode())
    return b"\n".join(out) + b"\n"


def upload(
    api: APIClient,
    content: bytes,
    *,
    purpose: str = "batch",
    filename: str = "input.jsonl",
    **extra: Any,
) -> Any:
    """POST /v1/files as the SDK does (multipart); returns the response."""
    file = SimpleUploadedFile(filename, content, content_type="application/jsonl")
    return api.post("/v1/files", {"file": file, "purpose": purpose, **extra}, format="multipart")


@pytest.fixture
def make_file(owner: User) -> Callable[..., File]:
    """A stored file of the owner's (or of ``owner=``), made through the service."""

    def make(content: bytes = b"", *, purpose: str = "batch", user: User | None = None) -> File:
        return services.file_create(
            owner=user or owner,
            upload=SimpleUploadedFile("input.jsonl", content),
            purpose=purpose,
        )

    return make


@pytest.fixture
def make_batch(owner: User) -> Callable[..., Batch]:
    """A batch of the owner's in any status, with the timestamps that status implies."""

    def make(
        status: str = Batch.Status.VALIDATING,
        *,
        user: User | None = None,
        input_file_id: str = "file-missing",
        **fields: Any,
    ) -> Batch:
        batch = services.batch_create(
            owner=user or owner,
            input_file_id=input_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        now = timezone.now()
        stamps = {
            "in_progress": ["in_progress_at"],
            "finalizing": ["in_progress_at", "finalizing_at"],
            "completed": ["in_progress_at", "finalizing_at", "completed_at"],
            "failed": ["failed_at"],
            "expired": ["expired_at"],
            "cancelling": ["in_progress_at", "cancelling_at"],
            "cancelled": ["cancelling_at", "cancelled_at"],
        }
        updates: dict[str, Any] = dict.fromkeys(stamps.get(status, []), now)
        Batch.objects.filter(pk=batch.pk).update(status=status, **updates, **fields)
        batch.refresh_from_db()
        return batch

    return make
