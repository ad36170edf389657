"""Stop an upload as soon as it passes the size limit, before it fills the disk."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import (
    FileUploadHandler,
    MemoryFileUploadHandler,
    TemporaryFileUploadHandler,
)
from rest_framework.request import Request

from batches.api.errors import PayloadTooLargeError

# Room for the multipart envelope and the small form fields around the file itself.
_ENVELOPE_BYTES = 64 * 1024


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"File is too large: uploads may be at most {limit:,} bytes "
        f"(batch input files at most {settings.BATCH_MAX_INPUT_FILE_BYTES:,} bytes).",
        param="file",
        code="file_too_large",
    )


# Django's multipart parser reads uploads in the smallest chunk size of its handlers (64 KiB by
# default). 1 MiB chunks halved the time of a 200 MB upload (manage.py bench's ingest); 4 MiB
# ones were slower again. Memory per upload stays about one chunk.
UPLOAD_CHUNK_BYTES = 1 << 20


class MemoryUploadHandler(MemoryFileUploadHandler):
    """Django's handler for small uploads (up to FILE_UPLOAD_MAX_MEMORY_SIZE), in 1 MiB chunks."""

    chunk_size = UPLOAD_CHUNK_BYTES


class TemporaryUploadHandler(TemporaryFileUploadHandler):
    """Django's handler that spools an upload to a temporary file, in 1 MiB chunks."""

    chunk_size = UPLOAD_CHUNK_BYTES


class UploadSizeLimitHandler(FileUploadHandler):
    """First in the handler chain: counts the bytes as they stream and aborts past the limit."""

    chunk_size = UPLOAD_CHUNK_BYTES

    def __init__(self, request: Any, limit: int) -> None:
        super().__init__(request)
        self.limit = limit

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,  # noqa: N803 - Django's parameter name
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > self.limit + _ENVELOPE_BYTES:
            raise _too_large(self.limit)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            raise _too_large(self.limit)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def limit_upload_size(request: Request) -> None:
    """Install the limit before DRF parses the body (call it before touching request.data)."""
    limit = settings.BATCH_MAX_UPLOAD_BYTES
    django_request = request._request
    django_request.upload_handlers.insert(0, UploadSizeLimitHandler(django_request, limit))
