"""X-Request-ID in and out: every response names the request it answers, every log line too."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from batchsite.logging import log_context_clear, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept only if it is short and plain: it ends up in log lines and headers.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


def request_id_new() -> str:
    return f"req_{secrets.token_hex(16)}"


def request_id_from(request: HttpRequest) -> str:
    """The client's X-Request-ID if it is well-formed, else a fresh one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _CLIENT_ID.match(given) else request_id_new()


class RequestIdMiddleware:
    """First in the chain, so that every later middleware's and view's log lines carry the id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_from(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        # Not reset on the way out: Django logs 4xx/5xx answers ("Not Found: …") after the
        # middleware chain returns. request_context_clear runs once the response is sent.
        request_id_var.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def request_context_clear(sender: Any, **kwargs: Any) -> None:
    """request_finished receiver: the thread's next request or task starts without old ids."""
    log_context_clear()
