"""The one exception handler: every error, whatever raised it, in OpenAI's envelope."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, OperationalError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory

from batches.api.errors import ConflictError, openai_exception_handler
from batches.api.pagination import OpenAICursorPagination


def handle(exc: Exception) -> Response:
    response = openai_exception_handler(exc, {})
    assert response is not None
    return response


def test_an_openai_error_keeps_its_status_param_code_and_headers() -> None:
    response = handle(ConflictError("Busy.", param="file_id", code="file_in_use"))

    assert response.status_code == 409
    assert response.data == {
        "error": {
            "message": "Busy.",
            "type": "invalid_request_error",
            "param": "file_id",
            "code": "file_in_use",
        }
    }
    assert response["x-should-retry"] == "false"


def test_a_lost_database_is_a_retryable_503() -> None:
    response = handle(OperationalError("server closed the connection"))

    assert response.status_code == 503
    assert response.data["error"]["type"] == "server_error"
    assert response.data["error"]["code"] == "service_unavailable"
    assert response["retry-after"] == "5"


@pytest.mark.parametrize("exc", [IntegrityError("duplicate key"), ValueError("bug")])
def test_other_errors_are_left_to_djangos_500_handling(exc: Exception) -> None:
    assert openai_exception_handler(exc, {}) is None


def test_throttling_answers_openais_rate_limit_error() -> None:
    response = handle(exceptions.Throttled(wait=7))

    assert response.status_code == 429
    assert response.data["error"] == {
        "message": "Rate limit reached. Please retry after 7 seconds.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert response["Retry-After"] == "7"


def test_djangos_404_and_permission_denied_are_enveloped() -> None:
    not_found = handle(Http404())
    denied = handle(PermissionDenied())

    assert (not_found.status_code, not_found.data["error"]["message"]) == (404, "Not found.")
    assert denied.status_code == 403
    assert denied.data["error"]["type"] == "invalid_request_error"


def test_other_drf_errors_keep_their_message_and_code() -> None:
    response = handle(exceptions.MethodNotAllowed("PUT"))

    assert response.status_code == 405
    assert response.data["error"] == {
        "message": 'Method "PUT" not allowed.',
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


def test_a_drf_server_error_is_a_server_error() -> None:
    response = handle(exceptions.APIException())

    assert response.status_code == 500
    assert response.data["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (
            {"file": [exceptions.ErrorDetail("This field is required.", code="required")]},
            ("file", "missing_required_parameter", "Missing required parameter: 'file'."),
        ),
        (
            {"limits": {"seconds": [exceptions.ErrorDetail("Not an int.", code="invalid")]}},
            ("limits.seconds", "invalid_type", "Invalid value for 'limits.seconds': Not an int."),
        ),
        (
            {"kind": [exceptions.ErrorDetail('"x" is not a valid choice.', code="invalid_choice")]},
            ("kind", "invalid_value", "Invalid value for 'kind': \"x\" is not a valid choice."),
        ),
        (
            {"name": [exceptions.ErrorDetail("Ensure this is short.", code="max_length")]},
            ("name", "invalid_value", "Invalid value for 'name': Ensure this is short."),
        ),
        (
            {"non_field_errors": [exceptions.ErrorDetail("Bad pair.", code="invalid")]},
            (None, "invalid_value", "Bad pair."),
        ),
        (
            [exceptions.ErrorDetail("Invalid data.", code="invalid")],
            (None, "invalid_value", "Invalid data."),
        ),
    ],
)
def test_drf_validation_errors_read_as_openais(detail: Any, expected: tuple[Any, ...]) -> None:
    response = handle(exceptions.ValidationError(detail))

    error = response.data["error"]
    assert response.status_code == 400
    assert (error["param"], error["code"], error["message"]) == expected
    assert error["type"] == "invalid_request_error"


@pytest.mark.django_db
def test_an_unknown_route_answers_openais_invalid_url(api: APIClient) -> None:
    response = api.post("/v1/chat/completions", {}, format="json")

    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "Invalid URL (POST /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.django_db
def test_a_method_a_route_does_not_have_is_405_in_the_envelope(api: APIClient) -> None:
    response = api.put("/v1/batches", {}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_cursor_pagination_pages_querysets_only() -> None:
    request = Request(APIRequestFactory().get("/v1/files"))

    with pytest.raises(TypeError):
        OpenAICursorPagination().paginate_queryset([1, 2, 3], request)
