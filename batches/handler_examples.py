"""An example result handler: copy every result of a finished batch into a PostgreSQL table.

Switch it on next to the others::

    BATCH_RESULT_HANDLERS=batches.webhooks.handle_batch_terminal,batches.handler_examples.results_to_postgres

It writes into the database alias ``settings.BATCH_RESULTS_DATABASE`` (``"default"`` unless set;
add your warehouse to ``DATABASES`` under another alias to write there). The table is created on
first use::

    CREATE TABLE IF NOT EXISTS batch_results (
        batch_id    text        NOT NULL,
        custom_id   text        NOT NULL,
        model       text        NOT NULL,
        status_code integer,             -- the request's HTTP status, null if it never ran
        response    jsonb,               -- the response body (OpenAI's chat completion etc.)
        error       jsonb,               -- {"code", "message"} for failed requests
        written_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (batch_id, custom_id)
    );

Then, for instance: ``SELECT custom_id, response->'choices'->0->'message'->>'content' FROM
batch_results WHERE batch_id = 'batch_…'``.

It follows the rules of batches.handlers: it streams the result files (memory stays flat),
writes in slices of :data:`ROWS_PER_STATEMENT`, and upserts on ``(batch_id, custom_id)`` so a
retried run leaves exactly one row per request. Batches that end without results (failed in
validation, cancelled before starting) write nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from batches.handlers import batch_results
from batches.models import Batch

TABLE = "batch_results"
ROWS_PER_STATEMENT = 500

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    batch_id    text        NOT NULL,
    custom_id   text        NOT NULL,
    model       text        NOT NULL,
    status_code integer,
    response    jsonb,
    error       jsonb,
    written_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, custom_id)
)
"""
_UPSERT = f"""
INSERT INTO {TABLE} (batch_id, custom_id, model, status_code, response, error)
VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb)
ON CONFLICT (batch_id, custom_id) DO UPDATE SET
    model = EXCLUDED.model,
    status_code = EXCLUDED.status_code,
    response = EXCLUDED.response,
    error = EXCLUDED.error,
    written_at = now()
"""  # noqa: S608 - the table name is a constant of this module, values are parameters


def _rows(batch: Batch) -> Iterator[tuple[Any, ...]]:
    for line in batch_results(batch):
        response = line.get("response") or {}
        yield (
            batch.id,
            line["custom_id"],
            batch.model,
            response.get("status_code"),
            json.dumps(response["body"]) if response.get("body") is not None else None,
            json.dumps(line["error"]) if line.get("error") is not None else None,
        )


def results_to_postgres(batch: Batch) -> int:
    """Upsert the batch's results into ``batch_results``; returns how many rows were written."""
    alias = getattr(settings, "BATCH_RESULTS_DATABASE", "default")
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"results_to_postgres writes to PostgreSQL; database '{alias}' is {connection.vendor}."
        )
    written = 0
    rows = _rows(batch)
    # One transaction: readers see all of a batch's results or none of them.
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute(_CREATE)
        while slice_ := list(islice(rows, ROWS_PER_STATEMENT)):
            cursor.executemany(_UPSERT, slice_)
            written += len(slice_)
    return written
