"""OpenAI's error envelope, produced by one DRF exception handler for every /v1 route."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class OpenAIError(exceptions.APIException):
    """An error whose message, type, param and code are exactly what OpenAI would answer."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message)
        self.message = message
        self.param = param
        self.code_value = code
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers or {}


class InvalidRequestError(OpenAIError):
    pass


class NotFoundError(OpenAIError):
    status_code = status.HTTP_404_NOT_FOUND


class ConflictError(OpenAIError):
    status_code = status.HTTP_409_CONFLICT

    def __init__(self, message: str, **kwargs: Any) -> None:
        # The SDK retries 409s unless told not to; a state conflict will not go away by retrying.
        super().__init__(message, headers={"x-should-retry": "false"}, **kwargs)


class PayloadTooLargeError(OpenAIError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


def error_body(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str, str | None]:
    """The first (param, message, drf_code) in a DRF ValidationError's nested detail."""
    if isinstance(detail, dict) and detail:
        name, value = next(iter(detail.items()))
        param = name if name == "non_field_errors" else f"{prefix}{name}"
        found_param, message, code = _first_validation_error(value, f"{param}.")
        return (None if param == "non_field_errors" else found_param or param), message, code
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    code = getattr(detail, "code", None)
    return (prefix.rstrip(".") or None), str(detail), code


def _validation_error_body(exc: exceptions.ValidationError) -> dict[str, Any]:
    param, message, drf_code = _first_validation_error(exc.detail)
    if drf_code == "required" and param:
        return error_body(
            f"Missing required parameter: '{param}'.",
            error_type="invalid_request_error",
            param=param,
            code="missing_required_parameter",
        )
    if drf_code in {"invalid", "not_a_list", "not_a_dict", "invalid_choice"} and param:
        code = "invalid_value" if drf_code == "invalid_choice" else "invalid_type"
        return error_body(
            f"Invalid value for '{param}': {message}",
            error_type="invalid_request_error",
            param=param,
            code=code,
        )
    label = f"Invalid value for '{param}': " if param else ""
    return error_body(
        f"{label}{message}", error_type="invalid_request_error", param=param, code="invalid_value"
    )


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OpenAIError):
        return Response(
            error_body(
                exc.message, error_type=exc.error_type, param=exc.param, code=exc.code_value
            ),
            status=exc.status_code,
            headers=exc.headers,
        )
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            if isinstance(exc, exceptions.NotAuthenticated)
            else str(exc.detail)
        )
        return Response(
            error_body(message, error_type="invalid_request_error", code="invalid_api_key"),
            status=status.HTTP_401_UNAUTHORIZED,
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    if isinstance(exc, exceptions.ValidationError):
        return Response(_validation_error_body(exc), status=status.HTTP_400_BAD_REQUEST)
    # Only a lost connection, not every DatabaseError: an IntegrityError is a bug to see, and
    # retrying would not help it.
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        return Response(
            error_body(
                "The server is temporarily unable to reach its database. Please retry.",
                error_type="server_error",
                code="service_unavailable",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"retry-after": "5"},
        )

    response = exception_handler(exc, context)
    if response is None:
        # Not an API error: Django's own 500 handling (and error reporting) takes over.
        return None
    if isinstance(exc, exceptions.Throttled):
        # DRF has already set Retry-After; the stubs do not declare Throttled.wait.
        wait = int(getattr(exc, "wait", None) or 1)
        response.data = error_body(
            f"Rate limit reached. Please retry after {wait} seconds.",
            error_type="requests",
            code="rate_limit_exceeded",
        )
        return response
    if isinstance(exc, exceptions.APIException):
        message = str(exc.detail)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else None
    else:  # Django's Http404 or PermissionDenied, which DRF has answered with {"detail": ...}
        message = str(response.data["detail"])
        code = None
    error_type = "invalid_request_error" if response.status_code < 500 else "server_error"
    response.data = error_body(message, error_type=error_type, code=code)
    return response
