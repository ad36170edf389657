"""The OpenAPI schema: valid without warnings, and each documented response is what views send."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from batches.models import Batch, File
from inference.models import RegisteredModel
from tests.batches.conftest import jsonl, upload
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db

# The Files, Batches and Models APIs; the webhook endpoints are checked by their own tests.
OUR_PATHS = ("/v1/files", "/v1/batches", "/v1/models")


def test_the_schema_validates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))

    text = out.read_text()
    for operation in ("createBatch", "cancelBatch", "listFiles", "downloadFile", "listModels"):
        assert f"operationId: {operation}" in text


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema: `nullable` becomes a null type, objects are closed.

    Closing objects (no additionalProperties) makes a field the views answer but the schema does
    not declare fail the test, as a declared field they omit does (all are required).
    """
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _json_schema(value) for key, value in node.items()}
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    if schema.pop("nullable", False):
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        if isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
        else:
            schema = {"anyOf": [{"type": "null"}, schema]}
    return schema


class SchemaChecker:
    """Validates responses against the operation's documented response, noting which it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = _json_schema(document["components"])
        self.seen: set[tuple[str, str, str]] = set()

    def documented(self) -> set[tuple[str, str, str]]:
        return {
            (path, method, status)
            for path, operations in self.document["paths"].items()
            for method, operation in operations.items()
            for status, response in operation["responses"].items()
            if "application/json" in response.get("content", {})
        }

    def check(self, response: Any, method: str, path: str) -> Any:
        status = str(response.status_code)
        operation = self.document["paths"][path][method]
        assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
        documented = operation["responses"][status]["content"]["application/json"]["schema"]
        schema = {**_json_schema(copy.deepcopy(documented)), "components": self.components}
        body = response.json()
        jsonschema.Draft202012Validator(schema).validate(body)
        self.seen.add((path, method, status))
        return body


def test_every_documented_json_response_matches_what_the_views_answer(
    api: APIClient,
    anonymous_api: APIClient,
    other_api: APIClient,
    make_batch: Callable[..., Batch],
    registered_model: RegisteredModel,
) -> None:
    checker = SchemaChecker(api.get("/v1/openapi.json").json())
    check = checker.check

    # Files
    file = check(upload(api, jsonl([chat_line("a")])), "post", "/v1/files")
    check(upload(api, b"x", purpose="nonsense"), "post", "/v1/files")
    with override_settings(BATCH_MAX_INPUT_FILE_BYTES=1):
        check(upload(api, b"xx"), "post", "/v1/files")
    check(anonymous_api.post("/v1/files"), "post", "/v1/files")
    check(api.get("/v1/files", {"limit": 1}), "get", "/v1/files")
    check(api.get("/v1/files", {"limit": 0}), "get", "/v1/files")
    check(anonymous_api.get("/v1/files"), "get", "/v1/files")
    check(api.get(f"/v1/files/{file['id']}"), "get", "/v1/files/{file_id}")
    check(other_api.get(f"/v1/files/{file['id']}"), "get", "/v1/files/{file_id}")
    check(anonymous_api.get(f"/v1/files/{file['id']}"), "get", "/v1/files/{file_id}")
    check(api.get("/v1/files/file-x/content"), "get", "/v1/files/{file_id}/content")
    check(anonymous_api.get("/v1/files/file-x/content"), "get", "/v1/files/{file_id}/content")

    # Batches, in every status and shape the object takes
    created = check(
        api.post(
            "/v1/batches",
            {
                "input_file_id": file["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"k": "v"},
            },
            format="json",
        ),
        "post",
        "/v1/batches",
    )
    check(api.post("/v1/batches", {"endpoint": "/v1/x"}, format="json"), "post", "/v1/batches")
    check(anonymous_api.post("/v1/batches"), "post", "/v1/batches")
    output = File.objects.get(pk=file["id"])
    errors = {"object": "list", "data": [{"code": "c", "message": "m", "param": None, "line": 2}]}
    make_batch("failed", errors=errors, model="tiny-chat")
    make_batch("completed", output_file=output, error_file=output, request_total=1)
    # The file is the input of the validating batch: 409 until that batch ends.
    check(api.delete(f"/v1/files/{file['id']}"), "delete", "/v1/files/{file_id}")
    check(api.get("/v1/batches", {"limit": 100}), "get", "/v1/batches")
    check(api.get("/v1/batches", {"limit": 101}), "get", "/v1/batches")
    check(anonymous_api.get("/v1/batches"), "get", "/v1/batches")
    check(api.get(f"/v1/batches/{created['id']}"), "get", "/v1/batches/{batch_id}")
    check(api.get("/v1/batches/batch_x"), "get", "/v1/batches/{batch_id}")
    check(anonymous_api.get("/v1/batches/batch_x"), "get", "/v1/batches/{batch_id}")
    cancel = "/v1/batches/{batch_id}/cancel"
    check(api.post(f"/v1/batches/{created['id']}/cancel"), "post", cancel)
    check(api.post(f"/v1/batches/{make_batch('expired').id}/cancel"), "post", cancel)
    check(api.post("/v1/batches/batch_x/cancel"), "post", cancel)
    check(anonymous_api.post("/v1/batches/batch_x/cancel"), "post", cancel)
    check(api.delete(f"/v1/files/{file['id']}"), "delete", "/v1/files/{file_id}")
    check(api.delete(f"/v1/files/{file['id']}"), "delete", "/v1/files/{file_id}")
    check(anonymous_api.delete(f"/v1/files/{file['id']}"), "delete", "/v1/files/{file_id}")

    # Models
    check(api.get("/v1/models"), "get", "/v1/models")
    check(anonymous_api.get("/v1/models"), "get", "/v1/models")
    check(api.get("/v1/models/tiny-chat"), "get", "/v1/models/{model}")
    check(api.get("/v1/models/gpt-9"), "get", "/v1/models/{model}")
    check(anonymous_api.get("/v1/models/gpt-9"), "get", "/v1/models/{model}")

    # Per-key rate limits
    with override_settings(API_RATE_LIMITS={"uploads": "1/minute", "batch_creates": "1/minute"}):
        cache.clear()
        upload(api, b"x")
        check(upload(api, b"x"), "post", "/v1/files")
        batch = {"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "24h"}
        api.post("/v1/batches", batch, format="json")
        check(api.post("/v1/batches", batch, format="json"), "post", "/v1/batches")

    ours = {doc for doc in checker.documented() if doc[0].startswith(OUR_PATHS)}
    assert ours - checker.seen == set()


def test_the_checker_notices_an_undeclared_field() -> None:
    schema = _json_schema(
        {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    )

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"id": "x", "extra": 1})


def test_the_checker_reads_nullable_as_openapi_means_it() -> None:
    validator = jsonschema.Draft202012Validator(
        _json_schema(
            {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "nullable": True},
                    "b": {"allOf": [{"type": "string"}], "nullable": True},
                    "c": {"type": "string", "enum": ["x"], "nullable": True},
                },
            }
        )
    )

    validator.validate({"a": None, "b": None, "c": None})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"a": "1"})
