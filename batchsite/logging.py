"""JSON log lines that carry the request id, batch id and worker id of the work they describe.

The ids live in context variables: the web middleware sets the request id, the worker sets the
batch and worker ids with :func:`log_context`, and django-q2 carries all three from the code
that enqueues a task to the process that runs it (see :func:`task_context_attach`). A logging
filter copies them onto every record, so any ``logger.info(...)`` anywhere gets them for free.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
batch_id_var: ContextVar[str | None] = ContextVar("batch_id", default=None)
worker_id_var: ContextVar[str | None] = ContextVar("worker_id", default=None)

_CONTEXT_VARS: dict[str, ContextVar[str | None]] = {
    "request_id": request_id_var,
    "batch_id": batch_id_var,
    "worker_id": worker_id_var,
}
# The key under which an enqueued django-q2 task package carries the ids.
TASK_CONTEXT_KEY = "log_context"
_TASK_TOKENS_KEY = "_log_context_tokens"

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes in the line.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", *_CONTEXT_VARS}
)


def log_context_current() -> dict[str, str]:
    """The ids set in this context, for handing to another thread or process."""
    return {name: value for name, var in _CONTEXT_VARS.items() if (value := var.get()) is not None}


def log_context_clear() -> None:
    for var in _CONTEXT_VARS.values():
        var.set(None)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Set request_id / batch_id / worker_id for the log lines written inside the block."""
    unknown = set(ids) - set(_CONTEXT_VARS)
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = [
        (_CONTEXT_VARS[name], _CONTEXT_VARS[name].set(value)) for name, value in ids.items()
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context ids onto each record (None where not set), so formatters can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the context ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _CONTEXT_VARS.items():
            # The filter may not be attached (a handler configured elsewhere): read the context.
            value = getattr(record, name, None) or var.get()
            if value is not None:
                line[name] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


# --- django-q2: carry the ids from the enqueuer to the task ------------------------------------


def task_context_attach(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    """pre_enqueue receiver: store the caller's ids in the (signed) task package."""
    ids = log_context_current()
    if ids:
        task[TASK_CONTEXT_KEY] = ids


def task_context_enter(sender: Any, func: Any, task: dict[str, Any], **kwargs: Any) -> None:
    """pre_execute receiver: the task's log lines carry the ids of whoever enqueued it.

    Every id is set, to the task's value or to None, so nothing leaks from the previous task that
    ran in this process.
    """
    ids: dict[str, str] = task.get(TASK_CONTEXT_KEY) or {}
    task[_TASK_TOKENS_KEY] = [(var, var.set(ids.get(name))) for name, var in _CONTEXT_VARS.items()]


def task_context_exit(sender: Any, func: Any, task: dict[str, Any], **kwargs: Any) -> None:
    """post_execute_in_worker receiver: restore the ids as they were before the task.

    A synchronous task runs in its caller's thread, whose ids must survive it; the tokens are
    removed before the cluster pickles the task for its result queue.
    """
    for var, token in reversed(task.pop(_TASK_TOKENS_KEY, [])):
        var.reset(token)
