"""Schemathesis over every /v1 operation of our own OpenAPI schema: no 5xx, answers as documented.

The schema is the document /v1/openapi.json serves (a test checks they are the same), and every
operation is called through the WSGI application, with a valid key and with none, by
schemathesis' pytest integration. `make fuzz` runs the same tests with many more examples
(FUZZ_MAX_EXAMPLES).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batches import services as batch_services
from batches.models import Batch
from inference.models import RegisteredModel
from tests.conftest import chat_line
from tests.reliability.conftest import jsonl

# Requests go through the whole stack, connection handling included: no test transaction around.
pytestmark = pytest.mark.django_db(transaction=True)

# Enough to reach each operation's positive and negative cases in under two minutes; `make fuzz`
# raises it. Without a key every answer is the same 401, so fewer examples show it.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FUZZ_DERANDOMIZE", "1") == "1",
    suppress_health_check=list(HealthCheck),
)
NO_KEY_SETTINGS = settings(FUZZ_SETTINGS, max_examples=max(MAX_EXAMPLES // 3, 5))


@pytest.fixture
def real_ids(owner: User, registered_model: RegisteredModel) -> Callable[[], dict[str, str]]:
    """Ids of objects the key's owner really has, (re)made on demand as the fuzzer deletes them."""
    made: dict[str, str] = {}

    def ensure() -> dict[str, str]:
        from batches.models import File

        if not File.objects.filter(pk=made.get("file_id", "")).exists():
            upload = SimpleUploadedFile("in.jsonl", jsonl([chat_line("a")]))
            made["file_id"] = batch_services.file_create(
                owner=owner, upload=upload, purpose="batch"
            ).id
        if not Batch.objects.filter(pk=made.get("batch_id", "")).exists():
            made["batch_id"] = Batch.objects.create(
                owner=owner, input_file_id=made["file_id"], endpoint="/v1/chat/completions"
            ).id
        made["model"] = registered_model.name
        return made

    return ensure


def openapi_document() -> dict[str, Any]:
    """The document /v1/openapi.json serves (built here: fetching it needs a key, thus a DB)."""
    # drf-spectacular's SchemaGenerator has no annotations on __init__ or get_schema.
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]
    built = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    document: dict[str, Any] = json.loads(json.dumps(built))
    return document


# The promise: no 5xx, and every status, content type, header and body as the schema documents.
# (Strictness about unknown query parameters, which OpenAI ignores too, is not part of it.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(openapi_document())
schema.app = WSGIHandler()


def test_the_fuzzed_schema_is_the_one_the_api_serves(api: APIClient) -> None:
    served = api.get("/v1/openapi.json", HTTP_ACCEPT="application/json")
    assert served.status_code == 200
    assert json.loads(served.content) == openapi_document()
    assert schema.raw_schema == openapi_document()
    operations = {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
    }
    assert ("POST", "/v1/batches") in operations and len(operations) >= 10


@pytest.fixture
def calls() -> Iterator[list[int]]:
    counted: list[int] = []
    yield counted
    print(f"fuzz cases run: {len(counted)}")  # the figure `make fuzz` reports


def with_real_ids(case: Any, ids: dict[str, str]) -> None:
    # Random ids only ever reach the 404 branch: every other case uses an object that exists,
    # so the success responses are checked against the schema too.
    params = case.path_parameters or {}
    for name in list(params):
        if name in ids and hash(str(params[name])) % 2 == 0:
            params[name] = ids[name]


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_with_a_valid_key_answers_without_5xx_and_as_documented(
    case: Any, owner_key: str, real_ids: Callable[[], dict[str, str]], calls: list[int]
) -> None:
    with_real_ids(case, real_ids())
    calls.append(1)
    case.call_and_validate(headers={"Authorization": f"Bearer {owner_key}"}, checks=CHECKS)


@schema.parametrize()
@NO_KEY_SETTINGS
def test_every_operation_without_a_key_answers_401_as_documented(
    case: Any, real_ids: Callable[[], dict[str, str]], calls: list[int]
) -> None:
    with_real_ids(case, real_ids())
    case.headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() != "authorization"
    }
    calls.append(1)
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
