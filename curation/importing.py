"""Reading a batch's files into a queue's items and outputs.

Files are streamed and written in chunks with ``bulk_create``: memory stays flat and 50,000
results take seconds. Unique constraints on (queue, custom_id) and (item, batch) with
``ignore_conflicts`` make an import that runs again (a retried result handler) add nothing twice.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import islice
from typing import Any

from django.db import connection, models
from django.db.models import Max
from django.utils import timezone

from batches.models import Batch, File
from batches.validation import iter_lines
from curation.models import DataSource, Item, ItemOutput, Question, Queue

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1_000
_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*)\n```\s*$", re.DOTALL)


@lru_cache(maxsize=256)
def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_json_text(text: str) -> Any:
    """The JSON value in a model's text (also inside a ``` fence), or None when it is not JSON."""
    stripped = text.strip()
    fenced = _FENCE_RE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    if not stripped or stripped[0] not in "{[":
        return None
    return _loads(stripped)


def value_at_path(root: Any, path: str) -> Any:
    """Follow a dotted path (``messages.-1.content.subject``); None where it leads nowhere.

    A JSON string met on the way is parsed, so a path reaches into a JSON user message.
    """
    value = root
    for segment in path.split(".") if path else ():
        if isinstance(value, str):
            value = parse_json_text(value)
        if isinstance(value, dict):
            if segment not in value:
                return None
            value = value[segment]
        elif isinstance(value, list):
            try:
                value = value[int(segment)]
            except (ValueError, IndexError):
                return None
        else:
            return None
    return value


def _option_for(question: Question, value: Any) -> str:
    choices = question.choices
    if isinstance(value, bool) and len(choices) == 2:
        # true/false maps onto the first/second option (Yes/No, True/False, ...).
        return choices[0] if value else choices[1]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    folded = text.strip().casefold()
    for choice in choices:
        if choice.casefold() == folded:
            return choice
    return text


def answer_from_model(question: Question, value: Any) -> Any:
    """The model's value as an answer to ``question``, matched to its options where possible."""
    kind = question.type
    if kind in Question.SINGLE_OPTION_TYPES:
        return _option_for(question, value)
    if kind in (Question.Type.MULTI_CHOICE, Question.Type.RANKING):
        values = value if isinstance(value, list) else [value]
        return [_option_for(question, entry) for entry in values]
    if kind == Question.Type.NUMBER:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        try:
            number = float(str(value).strip())
        except ValueError:
            return str(value)
        return int(number) if number.is_integer() else number
    if kind == Question.Type.TEXT:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return value


def model_answers(questions: Iterable[Question], parsed: Any) -> dict[str, Any]:
    if not isinstance(parsed, dict):
        return {}
    answers = {}
    for question in questions:
        value = value_at_path(parsed, question.answer_path)
        if value is not None:
            answers[question.key] = answer_from_model(question, value)
    return answers


@dataclass
class RequestContext:
    """One input line's request, with the roots automatic data sources look in."""

    body: dict[str, Any]
    batch_metadata: dict[str, Any]

    @cached_property
    def user_json(self) -> Any:
        messages = self.body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    content = message.get("content")
                    return parse_json_text(content) if isinstance(content, str) else None
        prompt = self.body.get("prompt")
        return parse_json_text(prompt) if isinstance(prompt, str) else None

    def auto_roots(self) -> Iterator[Any]:
        yield self.body.get("metadata")
        yield self.user_json
        yield self.batch_metadata


def data_source_value(
    source: DataSource,
    *,
    context: RequestContext | None,
    response: Any = None,
    parsed: Any = None,
) -> Any:
    """The value of one data source for one item; None when the batch does not have it."""
    is_chat = source.type == DataSource.Type.CHAT
    kind = source.source
    if kind == DataSource.Source.RESPONSE:
        return value_at_path(response, source.path or source.key)
    if kind == DataSource.Source.OUTPUT:
        return value_at_path(parsed, source.path or source.key)
    if context is None:
        return None
    if kind == DataSource.Source.METADATA:
        return value_at_path(context.batch_metadata, source.path or source.key)
    if kind == DataSource.Source.REQUEST:
        return value_at_path(context.body, source.path or ("messages" if is_chat else source.key))
    if is_chat and not source.path:
        return context.body.get("messages", context.body.get("prompt"))
    for root in context.auto_roots():
        value = value_at_path(root, source.path or source.key)
        if value is not None:
            return value
    return None


def search_text_of(custom_id: str, data: dict[str, Any]) -> str:
    parts = [custom_id]
    for value in data.values():
        parts.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return "\n".join(parts)


def _json_lines(file: File) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, streamed; lines that are not objects are skipped."""
    with file.content.open("rb") as stream:
        for number, raw in enumerate(iter_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (ValueError, RecursionError):
                logger.warning("file %s line %d is not JSON; skipped", file.id, number)
                continue
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                yield line


def _chunks(lines: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while chunk := list(islice(lines, CHUNK_SIZE)):
        yield chunk


def _item_ids(queue: Queue, custom_ids: list[str]) -> dict[str, int]:
    return dict(
        Item.objects.filter(queue=queue, custom_id__in=custom_ids).values_list("custom_id", "id")
    )


def _insert_ignoring_duplicates(
    model: type[models.Model], columns: list[str], rows: list[list[Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING with executemany (SQLite and PostgreSQL alike).

    bulk_create compiles every value through the ORM, which made the import spend most of its
    time building SQL; a prepared statement run over plain rows is several times faster.
    """
    if not rows:
        return
    by_name = {field.name: field for field in model._meta.concrete_fields}
    fields = [by_name[name] for name in columns]
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING".format(  # noqa: S608
        quote(model._meta.db_table),
        ", ".join(quote(str(field.column)) for field in fields),
        ", ".join(["%s"] * len(fields)),
    )
    # Only JSON and time values need the database's own form; ids, text and flags go as they are.
    adapted = [
        (index, field)
        for index, field in enumerate(fields)
        if isinstance(field, models.JSONField | models.DateTimeField)
    ]
    prepared = []
    for row in rows:
        values = list(row)
        for index, field in adapted:
            values[index] = field.get_db_prep_save(values[index], connection)
        prepared.append(values)
    with connection.cursor() as cursor:
        cursor.executemany(sql, prepared)


_ITEM_COLUMNS = [
    "queue",
    "custom_id",
    "position",
    "data",
    "prompt",
    "search_text",
    "submitted_count",
    "reviewers_disagree",
    "created_at",
]


def _create_items(queue: Queue, new: list[tuple[str, dict[str, Any], Any]]) -> None:
    """Add (custom_id, data, prompt) items after the queue's last; existing custom_ids stay."""
    if not new:
        return
    start = (Item.objects.filter(queue=queue).aggregate(top=Max("position"))["top"] or 0) + 1
    now = timezone.now()
    rows = [
        [
            queue.pk,
            custom_id,
            start + offset,
            data,
            prompt,
            search_text_of(custom_id, data),
            0,
            False,
            now,
        ]
        for offset, (custom_id, data, prompt) in enumerate(new)
    ]
    _insert_ignoring_duplicates(Item, _ITEM_COLUMNS, rows)


def import_requests(*, queue: Queue, batch: Batch) -> None:
    """One item per custom_id of the batch's input file, with its request-side data values."""
    input_file = File.objects.filter(pk=batch.input_file_id).first()
    if input_file is None:
        logger.warning("batch %s: input file %s is gone", batch.id, batch.input_file_id)
        return
    sources = list(queue.schema.data_sources.all())
    request_sources = [
        s for s in sources if s.source not in (DataSource.Source.RESPONSE, DataSource.Source.OUTPUT)
    ]
    batch_metadata = batch.metadata if isinstance(batch.metadata, dict) else {}
    for chunk in _chunks(_json_lines(input_file)):
        existing = _item_ids(queue, [line["custom_id"] for line in chunk])
        rows: dict[str, tuple[str, dict[str, Any], Any]] = {}
        for line in chunk:
            custom_id = line["custom_id"]
            if custom_id in existing:
                continue
            body: dict[str, Any] = line["body"] if isinstance(line.get("body"), dict) else {}
            context = RequestContext(body=body, batch_metadata=batch_metadata)
            data = {}
            for source in request_sources:
                value = data_source_value(source, context=context)
                if value is not None:
                    data[source.key] = value
            prompt = body.get("messages", body.get("prompt", body.get("input")))
            rows[custom_id] = (custom_id, data, prompt)
        _create_items(queue, list(rows.values()))


def _response_text(body: Any) -> tuple[str, str]:
    """(text, finish_reason) of a chat or completions response body."""
    if not isinstance(body, dict):
        return "", ""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            if not isinstance(content, str):
                content = json.dumps(content, ensure_ascii=False) if content is not None else ""
            return content, str(choice.get("finish_reason") or "")
        return str(choice.get("text") or ""), str(choice.get("finish_reason") or "")
    return json.dumps(body, ensure_ascii=False), ""


_OUTPUT_COLUMNS = [
    "item",
    "batch",
    "position",
    "model",
    "text",
    "parsed",
    "answers",
    "error",
    "finish_reason",
]


def import_results(*, queue: Queue, batch: Batch, position: int) -> None:
    """One output per custom_id from the batch's output and error files."""
    questions = list(queue.schema.questions.all())
    response_sources = [
        s
        for s in queue.schema.data_sources.all()
        if s.source in (DataSource.Source.RESPONSE, DataSource.Source.OUTPUT)
    ]
    for file in (batch.output_file, batch.error_file):
        if file is None:
            continue
        for chunk in _chunks(_json_lines(file)):
            outputs: list[tuple[str, list[Any], dict[str, Any]]] = []
            for line in chunk:
                response: dict[str, Any] = (
                    line["response"] if isinstance(line.get("response"), dict) else {}
                )
                body = response.get("body")
                error = line.get("error")
                if error is not None:
                    text, finish_reason, parsed = "", "", None
                    if not isinstance(error, dict):
                        error = {"code": "", "message": str(error)}
                else:
                    text, finish_reason = _response_text(body)
                    parsed = parse_json_text(text)
                model = (body.get("model") if isinstance(body, dict) else None) or batch.model
                response_data = {}
                for source in response_sources:
                    value = data_source_value(source, context=None, response=body, parsed=parsed)
                    if value is not None:
                        response_data[source.key] = value
                row = [
                    batch.id,
                    position,
                    str(model)[:255],
                    text,
                    parsed,
                    model_answers(questions, parsed),
                    error,
                    finish_reason[:32],
                ]
                outputs.append((line["custom_id"], row, response_data))
            custom_ids = [custom_id for custom_id, _, _ in outputs]
            item_ids = _item_ids(queue, custom_ids)
            missing = list(dict.fromkeys(c for c in custom_ids if c not in item_ids))
            if missing:
                # Results whose request line is missing still get an item, with no data.
                _create_items(queue, [(custom_id, {}, None) for custom_id in missing])
                item_ids = _item_ids(queue, custom_ids)
            _insert_ignoring_duplicates(
                ItemOutput,
                _OUTPUT_COLUMNS,
                [[item_ids[custom_id], *row] for custom_id, row, _ in outputs],
            )
            if response_sources and position == 0:
                _merge_response_data(item_ids, outputs)


def _merge_response_data(
    item_ids: dict[str, int], outputs: list[tuple[str, list[Any], dict[str, Any]]]
) -> None:
    by_id = {item_ids[custom_id]: data for custom_id, _, data in outputs if data}
    items = list(Item.objects.filter(pk__in=list(by_id)).only("id", "custom_id", "data"))
    for item in items:
        item.data = {**by_id[item.pk], **item.data}
        item.search_text = search_text_of(item.custom_id, item.data)
    Item.objects.bulk_update(items, ["data", "search_text"])
