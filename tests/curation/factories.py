"""Completed batches written straight into the database and file storage, as the worker leaves
them: an input file, an output file and an error file of OpenAI's batch line shapes."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from batches.models import Batch, File
from batches.services import file_create_generated


def _reference_schemas() -> Path:
    """The real-world schema files, in ``shared/`` beside the checkout.

    ``REFERENCE_DIR`` names another place. A throwaway clone of a local checkout (a CI rehearsal
    in /tmp) has no ``shared/`` beside it: then the one beside the checkout it was cloned from.
    """
    if os.environ.get("REFERENCE_DIR"):
        return Path(os.environ["REFERENCE_DIR"]) / "conquest_schemas"
    root = Path(__file__).resolve().parents[2]
    beside = root.parent / "shared" / "reference" / "conquest_schemas"
    if beside.is_dir():
        return beside
    origin = subprocess.run(
        ["git", "-C", str(root), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        return Path(origin).resolve().parent / "shared" / "reference" / "conquest_schemas"
    return beside


REFERENCE_SCHEMAS = _reference_schemas()
EXAMPLE_SCHEMAS = Path(__file__).resolve().parents[2] / "curation" / "example_schemas"


def chat_request(
    custom_id: str, fields: dict[str, Any] | str, *, model: str = "tiny-chat"
) -> dict[str, Any]:
    """A chat request whose user message is ``fields`` as JSON (or the text given)."""
    content = fields if isinstance(fields, str) else json.dumps(fields)
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": content},
            ],
            "max_tokens": 64,
        },
    }


def output_line(custom_id: str, text: str, *, model: str = "tiny-chat") -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{custom_id}",
            "body": {
                "id": f"chatcmpl-{custom_id}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        },
        "error": None,
    }


def error_line(custom_id: str, *, code: str = "context_length_exceeded") -> dict[str, Any]:
    message = "The prompt is longer than the model's context."
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 400,
            "request_id": f"req_{custom_id}",
            "body": {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            },
        },
        "error": {"code": code, "message": message},
    }


def _jsonl_file(owner: User, purpose: str, name: str, lines: list[dict[str, Any]]) -> File:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return file_create_generated(
        owner=owner, purpose=purpose, filename=name, content=io.BytesIO(content)
    )


def completed_batch(
    owner: User,
    requests: list[dict[str, Any]],
    outputs: dict[str, str | None],
    *,
    model: str = "tiny-chat",
    metadata: dict[str, str] | None = None,
    input_file: File | None = None,
    status: str = Batch.Status.COMPLETED,
) -> Batch:
    """A finished batch: ``outputs`` maps custom_id to the model's text, or None for a failure."""
    if input_file is None:
        input_file = _jsonl_file(owner, File.Purpose.BATCH, "input.jsonl", requests)
    ok = [output_line(cid, text, model=model) for cid, text in outputs.items() if text is not None]
    failed = [error_line(cid) for cid, text in outputs.items() if text is None]
    now = timezone.now()
    return Batch.objects.create(
        owner=owner,
        endpoint=Batch.Endpoint.CHAT_COMPLETIONS,
        input_file_id=input_file.id,
        status=status,
        model=model,
        metadata=metadata,
        request_total=len(requests),
        request_completed=len(ok),
        request_failed=len(failed),
        output_file=_jsonl_file(owner, File.Purpose.BATCH_OUTPUT, "output.jsonl", ok)
        if ok
        else None,
        error_file=_jsonl_file(owner, File.Purpose.BATCH_OUTPUT, "errors.jsonl", failed)
        if failed
        else None,
        in_progress_at=now,
        finalizing_at=now,
        completed_at=now if status == Batch.Status.COMPLETED else None,
    )


TICKETS: list[dict[str, Any]] = [
    {
        "subject": "Charged twice this month",
        "customer": "Ada Lovelace",
        "plan": "Pro",
        "body": "My card was charged twice for March. Please refund one of them.",
        "history": [{"title": "Refund request", "dates": "2024-01-03", "outcome": "refunded"}],
    },
    {
        "subject": "Export button does nothing",
        "customer": "Grace Hopper",
        "plan": "Team",
        "body": "Clicking Export on the report page does nothing since yesterday.",
    },
    {
        "subject": "Please add dark mode",
        "customer": "Alan Turing",
        "plan": "Free",
        "body": "Would love a dark theme for late-night work.",
    },
    {
        "subject": "Cannot log in <script>window.__pwned = 1</script>",
        "customer": "Mallory",
        "plan": "Pro",
        "body": '<img src=x onerror="window.__pwned = 2"> my password reset link fails.',
    },
]


def ticket_answer(**answers: Any) -> str:
    return json.dumps(answers)


def ticket_batch(owner: User, *, model: str = "tiny-chat", **kwargs: Any) -> Batch:
    """Four support tickets: a clean JSON answer, a fenced one, a non-JSON one and a failure."""
    requests = [chat_request(f"ticket-{i}", t, model=model) for i, t in enumerate(TICKETS)]
    outputs: dict[str, str | None] = {
        "ticket-0": ticket_answer(
            category="Billing",
            urgency="high",
            needs_reply=True,
            tags=["refund"],
            summary="Refund a double charge",
        ),
        "ticket-1": "```json\n"
        + ticket_answer(category="Bug", urgency="Normal", needs_reply=True, tags=[], summary="x")
        + "\n```",
        "ticket-2": "I think this is a feature request.",
        "ticket-3": None,
    }
    return completed_batch(owner, requests, outputs, model=model, **kwargs)
