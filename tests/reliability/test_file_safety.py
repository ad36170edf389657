"""Hostile filenames and downloads: no traversal, no header injection, never rendered inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from batches.models import File

pytestmark = pytest.mark.django_db

BOUNDARY = "hostile-boundary-4b1d"
HOSTILE_NAMES = [
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "/var/lib/postgresql/data/pg_hba.conf",
    "a/../../b.jsonl",
    "....//....//x.jsonl",
    "%2e%2e%2fescaped.jsonl",
    "input.jsonl\r\nSet-Cookie: stolen=1",
    "quote\".jsonl; filename*=UTF-8''evil.html",
    "nul\x00byte.jsonl",
    "ünïcødé ✓.jsonl",
    "x" * 300 + ".jsonl",
    "x" * 1_000 + ".jsonl",
    "CON",
    "report.html",
]


def multipart(filename: str, content: bytes) -> bytes:
    """A multipart body with the filename exactly as given (test clients would escape it)."""
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\n'
            "batch\r\n"
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/html\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def post_raw(api: APIClient, filename: str, content: bytes) -> Any:
    return api.generic(
        "POST",
        "/v1/files",
        cast(Any, multipart(filename, content)),  # bytes: the stubs say str, Django takes both
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )


@pytest.mark.parametrize("filename", HOSTILE_NAMES)
def test_a_hostile_filename_never_reaches_the_storage_path_or_the_download_headers(
    filename: str, api: APIClient, private_storage: Path
) -> None:
    content = b"<script>alert(1)</script>\n"

    response = post_raw(api, filename, content)

    if response.status_code == 400:
        # Django drops a part whose name sanitises to nothing, and refuses part headers over
        # 1 KiB: either way there is no file at all, and an error in OpenAI's shape.
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert not File.objects.exists()
        return
    assert response.status_code == 200, response.content
    body = response.json()
    stored = File.objects.get(pk=body["id"])
    assert stored.content.name == f"files/{stored.owner_id}/{stored.id}"
    location = Path(default_storage.path(stored.content.name)).resolve()
    assert location.is_relative_to(private_storage.resolve())
    shown = body["filename"]
    assert "/" not in shown and "\\" not in shown
    assert shown.isprintable() and 0 < len(shown) <= 255

    download = api.get(f"/v1/files/{stored.id}/content")

    assert b"".join(download) == content
    disposition = download["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "\r" not in disposition and "\n" not in disposition
    assert "/" not in disposition.partition(";")[2].replace("''", "")
    assert download["Content-Type"] == "application/octet-stream"
    assert download["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "content",
    [
        b"<!doctype html><html><body onload=alert(1)>",
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        b"%PDF-1.4\n",
        b'{"custom_id": "a", "note": "<img src=x onerror=alert(1)>"}\n',
    ],
)
def test_downloads_are_attachments_that_browsers_must_not_sniff(
    content: bytes, api: APIClient
) -> None:
    file_id = post_raw(api, "page.html", content).json()["id"]

    download = api.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="text/html")

    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"


def test_error_answers_on_the_download_route_are_json_not_html(api: APIClient) -> None:
    response = api.get("/v1/files/file-<script>/content", HTTP_ACCEPT="text/html")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
