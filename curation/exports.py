"""Reviewed items as training data: in-context examples, fine-tuning pairs, OpenAI chat JSONL, CSV.

For each item the latest submitted response wins: its answers over the model's, its edited
output over the original. Items that nobody submitted are exported only when gold-starred (then
with the model's answers). Every line says where it came from.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from curation.models import ExportConfig, Item, ItemOutput, Queue, Response

FORMATS = {
    "icl": ("In-context examples (JSONL)", "jsonl"),
    "finetune": ("Fine-tuning input/output pairs (JSONL)", "jsonl"),
    "openai": ("OpenAI chat fine-tuning (JSONL)", "jsonl"),
    "csv": ("CSV", "csv"),
}
CONTENT_TYPES = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_-]+)\}")
# A cell starting with one of these is a formula in spreadsheet programs.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class ExportRecord:
    item: Item
    output: ItemOutput | None
    response: Response | None
    answers: dict[str, Any]
    output_text: str

    def provenance(self, queue: Queue) -> dict[str, Any]:
        response = self.response
        return {
            "queue": queue.name,
            "queue_id": queue.pk,
            "custom_id": self.item.custom_id,
            "model": self.output.model if self.output else None,
            "batch_id": self.output.batch_id if self.output else None,
            "reviewer": response.reviewer.get_username() if response else None,
            "reviewed_at": response.submitted_at.isoformat()
            if response and response.submitted_at
            else None,
            "gold": self.item.is_gold,
            "edited": bool(response and response.edited_output),
        }


def export_records(items: QuerySet[Item]) -> Iterator[ExportRecord]:
    """The exportable items of ``items`` in queue order, streamed in chunks."""
    latest_submitted = (
        Response.objects.submitted().select_related("reviewer").order_by("-submitted_at", "-pk")
    )
    rows = (
        items.filter(Q(gold_starred_at__isnull=False) | Q(submitted_count__gt=0))
        .order_by("position")
        .prefetch_related(
            Prefetch("outputs", queryset=ItemOutput.objects.order_by("position")),
            Prefetch("responses", queryset=latest_submitted, to_attr="submitted_responses"),
        )
    )
    for item in rows.iterator(chunk_size=500):
        outputs = list(item.outputs.all())
        submitted: list[Response] = item.submitted_responses
        response = submitted[0] if submitted else None
        output = _chosen_output(outputs, response)
        answers = {**(output.answers if output else {}), **(response.answers if response else {})}
        text = (response.edited_output if response else "") or (output.text if output else "")
        yield ExportRecord(
            item=item, output=output, response=response, answers=answers, output_text=text
        )


def _chosen_output(outputs: list[ItemOutput], response: Response | None) -> ItemOutput | None:
    if response is not None and response.base_output_id is not None:
        for output in outputs:
            if output.pk == response.base_output_id:
                return output
    for output in outputs:
        if output.error is None:
            return output
    return outputs[0] if outputs else None


def format_value(value: Any) -> str:
    """A value as it reads in a prompt: text as is, a list of words joined, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(entry, str) for entry in value):
        return ", ".join(value)
    return json.dumps(value, ensure_ascii=False)


def fill_template(template: str, *sources: dict[str, Any]) -> str:
    """Replace ``{key}`` with the first source that has it; unknown placeholders stay."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        for source in sources:
            if key in source:
                return format_value(source[key])
        return match.group(0)

    return _PLACEHOLDER_RE.sub(replace, template)


def _last_user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return format_value(message.get("content"))
    return ""


def _blanks(config: ExportConfig) -> dict[str, Any]:
    """Every data source and question key: one without a value fills its placeholder with ''."""
    schema = config.schema
    keys = [*schema.data_sources.values_list("key", flat=True)]
    keys += schema.questions.values_list("key", flat=True)
    return dict.fromkeys(keys)


def _user_text(config: ExportConfig, record: ExportRecord, blanks: dict[str, Any]) -> str:
    if config.icl_user_template:
        return fill_template(config.icl_user_template, record.item.data, record.answers, blanks)
    return _last_user_text(record.item.prompt)


def _assistant_text(config: ExportConfig, record: ExportRecord, blanks: dict[str, Any]) -> str:
    if config.icl_assistant_template:
        return fill_template(
            config.icl_assistant_template, record.answers, record.item.data, blanks
        )
    return record.output_text


def _fields(names: list[str], first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {name: first.get(name, second.get(name)) for name in names}


def _jsonl(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"


def icl_line(
    queue: Queue, config: ExportConfig, record: ExportRecord, blanks: dict[str, Any]
) -> str:
    return _jsonl(
        {
            "system": config.icl_system_prompt,
            "user": _user_text(config, record, blanks),
            "assistant": _assistant_text(config, record, blanks),
            "provenance": record.provenance(queue),
        }
    )


def finetune_line(
    queue: Queue, config: ExportConfig, record: ExportRecord, blanks: dict[str, Any]
) -> str:
    data, answers = record.item.data, record.answers
    inputs = config.finetuning_input_fields
    outputs = config.finetuning_output_fields
    return _jsonl(
        {
            "input": _fields(inputs, data, answers) if inputs else data,
            "output": _fields(outputs, answers, data) if outputs else answers,
            "provenance": record.provenance(queue),
        }
    )


def openai_line(
    queue: Queue, config: ExportConfig, record: ExportRecord, blanks: dict[str, Any]
) -> str:
    messages: list[dict[str, Any]] = []
    prompt = record.item.prompt
    if not config.icl_user_template and isinstance(prompt, list):
        # No template: train on the request exactly as it was sent.
        messages.extend(
            {"role": m.get("role"), "content": m.get("content")}
            for m in prompt
            if isinstance(m, dict)
        )
    else:
        if config.icl_system_prompt:
            messages.append({"role": "system", "content": config.icl_system_prompt})
        messages.append({"role": "user", "content": _user_text(config, record, blanks)})
    messages.append({"role": "assistant", "content": _assistant_text(config, record, blanks)})
    return _jsonl({"messages": messages, "metadata": record.provenance(queue)})


def _csv_cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list) else format_value(value)
    if text.startswith(_FORMULA_PREFIXES):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def csv_lines(queue: Queue, records: Iterator[ExportRecord]) -> Iterator[str]:
    data_keys = [source.key for source in queue.schema.data_sources.all()]
    question_keys = [question.key for question in queue.schema.questions.all()]
    provenance_keys = [
        "queue",
        "custom_id",
        "model",
        "batch_id",
        "reviewer",
        "reviewed_at",
        "gold",
        "edited",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow([*provenance_keys, *data_keys, *question_keys, "output"])
    yield flush()
    for record in records:
        provenance = record.provenance(queue)
        writer.writerow(
            [
                *(_csv_cell(provenance[key]) for key in provenance_keys),
                *(_csv_cell(record.item.data.get(key)) for key in data_keys),
                *(_csv_cell(record.answers.get(key)) for key in question_keys),
                _csv_cell(record.output_text),
            ]
        )
        yield flush()


def export_lines(*, queue: Queue, items: QuerySet[Item], format: str) -> Iterator[str]:
    """The export file of ``items`` (already filtered to the export's scope), line by line."""
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    records = export_records(items)
    if format == "csv":
        yield from csv_lines(queue, records)
        return
    config = queue.schema.export
    line = {"icl": icl_line, "finetune": finetune_line, "openai": openai_line}[format]
    blanks = _blanks(config)
    for record in records:
        yield line(queue, config, record, blanks)


def export_filename(queue: Queue, format: str) -> str:
    extension = FORMATS[format][1]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", queue.name).strip("-").lower() or "queue"
    return f"{slug}-{queue.pk}-{format}.{extension}"
