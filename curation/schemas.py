"""Conquest schema files (camelCase JSON) to models and back.

The files of the system we replace import unchanged and export to an equal JSON document: keys we
do not model are kept in ``extra`` fields, and optional keys are written only when they have a
value, as those files do.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import transaction

from curation.models import ConquestSchema, DataSource, ExportConfig, Question, RenderingConfig

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SCHEMA_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

_SCHEMA_KEYS = {"id", "name", "description", "version", "dataSources", "questions", "rendering"}
_DATA_SOURCE_KEYS = {"id", "name", "type", "required", "displayFormat", "source", "path"}
_QUESTION_KEYS = {"id", "text", "type", "options", "required", "helpText", "modelAnswerPath"}
_RENDERING_FIELDS = {
    "layout": "layout",
    "showLLMPrediction": "show_llm_prediction",
    "showDataSources": "show_data_sources",
    "showRubrics": "show_rubrics",
    "theme": "theme",
    "customTemplate": "custom_template",
    "customCSS": "custom_css",
}
_ICL_FIELDS = {
    "systemPrompt": "icl_system_prompt",
    "userPromptTemplate": "icl_user_template",
    "assistantResponseTemplate": "icl_assistant_template",
}
_FINETUNING_FIELDS = {
    "inputFields": "finetuning_input_fields",
    "outputFields": "finetuning_output_fields",
}


class SchemaError(ValueError):
    """A schema file that cannot be imported; the message says where and why."""


def _require_str(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise SchemaError(f"{where} must be a non-empty string.")
    return value


def _optional_str(container: dict[str, Any], key: str, where: str) -> str:
    value = container.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SchemaError(f"{where}.{key} must be a string.")
    return value


def _bool(container: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = container.get(key, default)
    if not isinstance(value, bool):
        raise SchemaError(f"{where}.{key} must be true or false.")
    return value


def _choice(value: Any, allowed: list[str], where: str) -> str:
    if value not in allowed:
        raise SchemaError(f"{where} must be one of {', '.join(allowed)}; got {value!r}.")
    return str(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(f"{where} must be an object.")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise SchemaError(f"{where} must be a list of strings.")
    return list(value)


def _parse_data_source(raw: Any, index: int) -> DataSource:
    where = f"dataSources[{index}]"
    entry = _object(raw, where)
    key = _require_str(entry.get("id"), f"{where}.id")
    if not KEY_RE.match(key):
        raise SchemaError(f"{where}.id may contain only letters, digits, '_' and '-'.")
    return DataSource(
        position=index,
        key=key,
        name=_require_str(entry.get("name", key), f"{where}.name"),
        type=_choice(entry.get("type", "text"), DataSource.Type.values, f"{where}.type"),
        required=_bool(entry, "required", where, False),
        display_format=_choice(
            entry.get("displayFormat", "default"),
            DataSource.DisplayFormat.values,
            f"{where}.displayFormat",
        ),
        # Empty (or absent) means automatic: see DataSource.Source.
        source=_choice(entry.get("source") or "", DataSource.Source.values, f"{where}.source"),
        path=_optional_str(entry, "path", where),
        extra={k: v for k, v in entry.items() if k not in _DATA_SOURCE_KEYS},
    )


def _parse_question(raw: Any, index: int) -> Question:
    where = f"questions[{index}]"
    entry = _object(raw, where)
    key = _require_str(entry.get("id"), f"{where}.id")
    if not KEY_RE.match(key):
        raise SchemaError(f"{where}.id may contain only letters, digits, '_' and '-'.")
    question_type = _choice(entry.get("type", "text"), Question.Type.values, f"{where}.type")
    options = _string_list(entry.get("options"), f"{where}.options")
    needs_options = question_type in Question.OPTION_TYPES and question_type != "boolean"
    if needs_options and not options:
        raise SchemaError(f"{where} is a {question_type} question and needs options.")
    if len(set(options)) != len(options):
        raise SchemaError(f"{where}.options has the same option twice.")
    return Question(
        position=index,
        key=key,
        text=_require_str(entry.get("text"), f"{where}.text"),
        type=question_type,
        options=options,
        required=_bool(entry, "required", where, False),
        help_text=_optional_str(entry, "helpText", where),
        model_answer_path=_optional_str(entry, "modelAnswerPath", where),
        extra={k: v for k, v in entry.items() if k not in _QUESTION_KEYS},
    )


def _parse_rendering(raw: Any) -> RenderingConfig:
    entry = _object(raw, "rendering")
    return RenderingConfig(
        layout=_choice(
            entry.get("layout", "two-column"), RenderingConfig.Layout.values, "rendering.layout"
        ),
        show_llm_prediction=_bool(entry, "showLLMPrediction", "rendering", True),
        show_data_sources=_bool(entry, "showDataSources", "rendering", True),
        show_rubrics=_bool(entry, "showRubrics", "rendering", True),
        theme=_optional_str(entry, "theme", "rendering"),
        custom_template=_optional_str(entry, "customTemplate", "rendering"),
        custom_css=_optional_str(entry, "customCSS", "rendering"),
        extra={k: v for k, v in entry.items() if k not in _RENDERING_FIELDS},
    )


def _parse_export(raw: Any, *, data_keys: set[str], question_keys: set[str]) -> ExportConfig:
    entry = _object(raw, "export")
    icl = _object(entry.get("iclFormat"), "export.iclFormat")
    finetuning = _object(entry.get("finetuningFormat"), "export.finetuningFormat")
    export = ExportConfig(
        extra={
            "export": {
                k: v for k, v in entry.items() if k not in {"iclFormat", "finetuningFormat"}
            },
            "iclFormat": {k: v for k, v in icl.items() if k not in _ICL_FIELDS},
            "finetuningFormat": {
                k: v for k, v in finetuning.items() if k not in _FINETUNING_FIELDS
            },
            # Which objects the file had, even empty, so that they come back as they were.
            "present": [
                name
                for name, present in (
                    ("export", raw is not None),
                    ("iclFormat", "iclFormat" in entry),
                    ("finetuningFormat", "finetuningFormat" in entry),
                )
                if present
            ],
        }
    )
    for json_key, field in _ICL_FIELDS.items():
        setattr(export, field, _optional_str(icl, json_key, "export.iclFormat"))
    for json_key, field in _FINETUNING_FIELDS.items():
        fields = _string_list(finetuning.get(json_key), f"export.finetuningFormat.{json_key}")
        unknown = [name for name in fields if name not in data_keys | question_keys]
        if unknown:
            raise SchemaError(
                f"export.finetuningFormat.{json_key} names {', '.join(unknown)}, which is neither "
                "a data source nor a question."
            )
        setattr(export, field, fields)
    return export


def schema_parse(
    data: Any,
) -> tuple[ConquestSchema, list[DataSource], list[Question], RenderingConfig, ExportConfig]:
    """Check a schema document and build its (unsaved) rows; raise SchemaError when it is wrong."""
    document = _object(data, "The schema")
    key = _require_str(document.get("id"), "id")
    if not SCHEMA_KEY_RE.match(key):
        raise SchemaError("id may contain only letters, digits, '_', '.' and '-'.")
    version = document.get("version", "1")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)
    schema = ConquestSchema(
        key=key,
        name=_require_str(document.get("name", key), "name"),
        description=_optional_str(document, "description", "schema"),
        version=_require_str(version, "version"),
        extra={k: v for k, v in document.items() if k not in _SCHEMA_KEYS | {"export"}},
    )
    raw_sources = document.get("dataSources", [])
    raw_questions = document.get("questions", [])
    if not isinstance(raw_sources, list):
        raise SchemaError("dataSources must be a list.")
    if not isinstance(raw_questions, list) or not raw_questions:
        raise SchemaError("questions must be a non-empty list.")
    sources = [_parse_data_source(raw, index) for index, raw in enumerate(raw_sources)]
    questions = [_parse_question(raw, index) for index, raw in enumerate(raw_questions)]
    for kind, keys in (
        ("dataSources", [s.key for s in sources]),
        ("questions", [q.key for q in questions]),
    ):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise SchemaError(f"{kind} has the id {', '.join(duplicates)} more than once.")
    rendering = _parse_rendering(document.get("rendering"))
    export = _parse_export(
        document.get("export"),
        data_keys={s.key for s in sources},
        question_keys={q.key for q in questions},
    )
    return schema, sources, questions, rendering, export


def schema_to_dict(schema: ConquestSchema) -> dict[str, Any]:
    """The schema as a conquest JSON document (camelCase keys)."""
    return _document(
        schema,
        list(schema.data_sources.all()),
        list(schema.questions.all()),
        schema.rendering,
        schema.export,
    )


def _data_source_to_dict(source: DataSource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": source.key,
        "name": source.name,
        "type": source.type,
        "required": source.required,
        "displayFormat": source.display_format,
    }
    if source.source:
        entry["source"] = source.source
    if source.path:
        entry["path"] = source.path
    entry.update(source.extra)
    return entry


def _question_to_dict(question: Question) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": question.key, "text": question.text, "type": question.type}
    if question.options:
        entry["options"] = list(question.options)
    entry["required"] = question.required
    if question.help_text:
        entry["helpText"] = question.help_text
    if question.model_answer_path:
        entry["modelAnswerPath"] = question.model_answer_path
    entry.update(question.extra)
    return entry


def _rendering_to_dict(rendering: RenderingConfig) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for json_key, field in _RENDERING_FIELDS.items():
        value = getattr(rendering, field)
        if value != "":
            entry[json_key] = value
    entry.update(rendering.extra)
    return entry


def _export_to_dict(export: ExportConfig) -> dict[str, Any] | None:
    extra = export.extra or {}
    present = set(extra.get("present", []))
    icl = {k: getattr(export, f) for k, f in _ICL_FIELDS.items() if getattr(export, f)}
    icl.update(extra.get("iclFormat", {}))
    finetuning = {
        k: list(getattr(export, f)) for k, f in _FINETUNING_FIELDS.items() if getattr(export, f)
    }
    finetuning.update(extra.get("finetuningFormat", {}))
    entry: dict[str, Any] = dict(extra.get("export", {}))
    if icl or "iclFormat" in present:
        entry["iclFormat"] = icl
    if finetuning or "finetuningFormat" in present:
        entry["finetuningFormat"] = finetuning
    if not entry and "export" not in present:
        return None
    return entry


def schema_import(*, data: Any, user: Any = None) -> tuple[ConquestSchema, bool]:
    """Import a schema document; return (schema, created).

    A version is immutable: importing the same document again returns the stored version, and a
    different document under an existing version is refused, so queues keep what they were made
    with.
    """
    schema, sources, questions, rendering, export = schema_parse(data)
    existing = ConquestSchema.objects.filter(key=schema.key, version=schema.version).first()
    if existing is not None:
        incoming = _document(schema, sources, questions, rendering, export)
        if _canonical(schema_to_dict(existing)) == _canonical(incoming):
            return existing, False
        raise SchemaError(
            f"Schema {schema.key} version {schema.version} exists with different content; "
            "give the changed schema a new version."
        )
    with transaction.atomic():
        schema.created_by = user if getattr(user, "pk", None) else None
        schema.save()
        for source in sources:
            source.schema = schema
        for question in questions:
            question.schema = schema
        DataSource.objects.bulk_create(sources)
        Question.objects.bulk_create(questions)
        rendering.schema = schema
        rendering.save()
        export.schema = schema
        export.save()
    return schema, True


def _document(
    schema: ConquestSchema,
    sources: list[DataSource],
    questions: list[Question],
    rendering: RenderingConfig,
    export: ExportConfig,
) -> dict[str, Any]:
    document: dict[str, Any] = {"id": schema.key, "name": schema.name, "version": schema.version}
    if schema.description:
        document["description"] = schema.description
    document["dataSources"] = [_data_source_to_dict(source) for source in sources]
    document["questions"] = [_question_to_dict(question) for question in questions]
    document["rendering"] = _rendering_to_dict(rendering)
    export_entry = _export_to_dict(export)
    if export_entry is not None:
        document["export"] = export_entry
    document.update(schema.extra)
    return document


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False)
