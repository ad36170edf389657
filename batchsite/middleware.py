"""X-Request-ID in and out: every response names the request it answers, every log line too.

Every request is also logged once, as it is answered (logger ``batchsite.access``), which is why
gunicorn's own access log is off.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import BadRequest
from django.http import Http404, HttpRequest, HttpResponse

from batchsite.logging import log_context_clear, request_id_var
from batchsite.metrics import route_label

access_logger = logging.getLogger("batchsite.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept only if it is short and plain: it ends up in log lines and headers.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")
# Probes and scrapes arrive every few seconds: their lines are DEBUG, out of the default INFO log.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})


# Request ids are unique, not secret: 128 bits from a generator of our own rather than a urandom
# syscall per request (5% of GET /v1/batches/{id} under load). Not the random module's shared
# one: libraries seed that (vLLM with a request's seed, hypothesis in tests), and ids repeated.
_request_ids = random.Random()
# Seeded afresh from the OS in every forked process (gunicorn's workers), or they would share it.
os.register_at_fork(after_in_child=_request_ids.seed)


def request_id_new() -> str:
    return f"req_{_request_ids.getrandbits(128):032x}"


def request_id_from(request: HttpRequest) -> str:
    """The client's X-Request-ID if it is well-formed, else a fresh one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _CLIENT_ID.match(given) else request_id_new()


class RequestIdMiddleware:
    """First in the chain, so that every later middleware's and view's log lines carry the id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = request_id_from(request)
        # Not reset on the way out: Django logs 4xx/5xx answers ("Not Found: …") after the
        # middleware chain returns. request_context_clear runs once the response is sent.
        request_id_var.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        access_log(request, response, started)
        return response


def access_log(request: HttpRequest, response: HttpResponse, started: float) -> None:
    """One line per request: ``GET /v1/batches/batch_abc 200``, with the route pattern, status
    and duration as fields (the request id comes from the context, as on every line)."""
    level = logging.DEBUG if request.path_info in _QUIET_PATHS else logging.INFO
    # Checked first so that a probe's line costs nothing when DEBUG is off.
    if not access_logger.isEnabledFor(level):
        return
    access_logger.log(
        level,
        "%s %s %d",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "route": route_label(request),
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )


def request_context_clear(sender: Any, **kwargs: Any) -> None:
    """request_finished receiver: the thread's next request or task starts without old ids."""
    log_context_clear()


class NulBytesMiddleware:
    """Pages (operator, curation, admin) refuse NUL characters in their path and query.

    No stored id or name holds one, and PostgreSQL cannot even compare text with one: the lookup
    would fail as a 500. So such a path is not found and such a query is a bad request. The /v1
    routes refuse them in OpenAI's envelope, after the key check (batches.api.views). Forms check
    their own fields (Django's CharField refuses NUL).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith("/v1/"):
            if "\x00" in request.path_info:
                raise Http404("No such page.")
            if any(
                "\x00" in name or any("\x00" in value for value in values)
                for name, values in request.GET.lists()
            ):
                raise BadRequest("Null characters are not allowed in the query.")
        return self.get_response(request)
