"""What the item page shows: data values by display format, outputs with differences marked.

Everything here returns plain values for templates, which escape them; the only HTML built here
is Markdown rendered with raw HTML switched off.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.forms import BoundField
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

from curation.exports import format_value
from curation.forms import ResponseForm, answer_field_name, rank_field_name
from curation.models import DataSource, ItemOutput, Question, comparable

# Raw HTML in Markdown is shown as text; markdown-it also refuses javascript: and data: links.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})
# Word-level diffs are quadratic at worst: longer outputs are shown without highlighting.
MAX_DIFF_TOKENS = 4_000
_TOKEN_RE = re.compile(r"\s+|[^\s]+")
_TITLE_KEYS = ("title", "role", "position", "degree", "name", "company")
_SUBTITLE_KEYS = ("company", "employer", "institution", "school", "organization", "university")
_DATE_KEYS = ("dates", "period", "years", "duration", "year", "start", "end")


def markdown_html(text: str) -> SafeString:
    return mark_safe(str(_markdown.render(text)))  # noqa: S308 (html disabled above: input is escaped)


def humanize_key(key: str) -> str:
    return key.replace("_", " ").replace("-", " ").strip().capitalize()


@dataclass
class Entry:
    """One entry of a list or timeline: a line of text, or labelled fields."""

    text: str = ""
    title: str = ""
    subtitle: str = ""
    dates: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Presented:
    kind: str
    text: str = ""
    html: SafeString | None = None
    href: str = ""
    entries: list[Entry] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)


def _entry(value: Any, *, timeline: bool) -> Entry:
    if not isinstance(value, dict):
        return Entry(text=format_value(value))
    rest = dict(value)

    def take(keys: tuple[str, ...]) -> str:
        for key in keys:
            if key in rest and rest[key] not in (None, ""):
                return format_value(rest.pop(key))
        return ""

    if not timeline:
        return Entry(fields=[(humanize_key(k), format_value(v)) for k, v in rest.items()])
    title = take(_TITLE_KEYS)
    subtitle = take(_SUBTITLE_KEYS)
    start, end = rest.pop("start_date", None), rest.pop("end_date", None)
    dates = take(_DATE_KEYS) or " \N{EN DASH} ".join(format_value(v) for v in (start, end) if v)
    return Entry(
        title=title,
        subtitle=subtitle,
        dates=dates,
        fields=[(humanize_key(k), format_value(v)) for k, v in rest.items()],
    )


def _chat_messages(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [("user", value)]
    messages = []
    for message in value if isinstance(value, list) else []:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text parts
                content = "\n".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
            messages.append((str(message.get("role", "")), format_value(content)))
    return messages


def present(source: DataSource, value: Any) -> Presented:
    """How one data value is shown, from its source's type and display format."""
    if value is None or value == "" or value == [] or value == {}:
        return Presented(kind="empty")
    display = source.display_format
    if source.type == DataSource.Type.CHAT:
        return Presented(kind="chat", messages=_chat_messages(value))
    if display == DataSource.DisplayFormat.LINK and isinstance(value, str):
        href = value.strip()
        if re.match(r"^https?://", href, re.IGNORECASE):
            return Presented(kind="link", text=href, href=href)
        return Presented(kind="text", text=value)
    if display == DataSource.DisplayFormat.MARKDOWN and isinstance(value, str):
        return Presented(kind="markdown", html=markdown_html(value))
    if display in (DataSource.DisplayFormat.LIST, DataSource.DisplayFormat.TIMELINE):
        timeline = display == DataSource.DisplayFormat.TIMELINE
        if isinstance(value, list):
            return Presented(
                kind="timeline" if timeline else "list",
                entries=[_entry(entry, timeline=timeline) for entry in value],
            )
        if isinstance(value, str):
            lines = [line.strip(" •-*\t") for line in value.splitlines() if line.strip()]
            return Presented(kind="list", entries=[Entry(text=line) for line in lines])
    if isinstance(value, dict):
        return Presented(
            kind="mapping",
            entries=[Entry(title=humanize_key(k), text=format_value(v)) for k, v in value.items()],
        )
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return Presented(kind="list", entries=[Entry(text=format_value(v)) for v in value])
    if isinstance(value, str):
        return Presented(kind="text", text=value)
    return Presented(kind="json", text=json.dumps(value, indent=2, ensure_ascii=False))


def scoped_css(css: str) -> SafeString:
    """A schema's custom CSS, scoped to its item page, unable to close the style element."""
    if not css.strip():
        return mark_safe("")
    # Inside <style> only "</style" can end the element: no "<" may get through.
    neutral = css.replace("<", "\\3c ")
    return mark_safe(f"@scope (.conquest-item) {{\n{neutral}\n}}")  # noqa: S308


def output_display_text(output: ItemOutput) -> str:
    """The output as reviewers read it: JSON pretty-printed, anything else as it came."""
    if output.parsed is not None and isinstance(output.parsed, dict | list):
        return json.dumps(output.parsed, indent=2, ensure_ascii=False)
    return output.text


def diff_segments(reference: str, text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, differs from ``reference``) at word boundaries."""
    theirs = _TOKEN_RE.findall(text)
    ours = _TOKEN_RE.findall(reference)
    if len(theirs) > MAX_DIFF_TOKENS or len(ours) > MAX_DIFF_TOKENS:
        return [(text, False)]
    segments: list[tuple[str, bool]] = []
    matcher = difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False)
    for tag, _, _, start, end in matcher.get_opcodes():
        piece = "".join(theirs[start:end])
        if not piece:
            continue
        changed = tag != "equal" and bool(piece.strip())
        if segments and segments[-1][1] == changed:
            segments[-1] = (segments[-1][0] + piece, changed)
        else:
            segments.append((piece, changed))
    return segments


@dataclass
class OutputView:
    output: ItemOutput
    label: str
    segments: list[tuple[str, bool]]
    is_json: bool
    compared: bool


def output_views(outputs: list[ItemOutput]) -> list[OutputView]:
    """Outputs side by side; from the second on, what differs from the first is marked."""
    views = []
    reference_text = output_display_text(outputs[0]) if outputs else ""
    labels = [output.model or f"Output {index + 1}" for index, output in enumerate(outputs)]
    for index, output in enumerate(outputs):
        label = labels[index]
        if labels.count(label) > 1:
            label = f"{label} ({output.batch_id or index + 1})"
        text = output_display_text(output)
        compare = index > 0 and outputs[0].error is None and output.error is None
        views.append(
            OutputView(
                output=output,
                label=label,
                segments=diff_segments(reference_text, text) if compare else [(text, False)],
                is_json=output.parsed is not None,
                compared=compare,
            )
        )
    return views


@dataclass
class Suggestion:
    model: str
    answer: str
    differs: bool


@dataclass
class QuestionView:
    question: Question
    number: int
    field: BoundField | None
    rank_fields: list[tuple[str, BoundField]]
    suggestions: list[Suggestion]
    # One (answer, differs from the first model) per output, for the comparison table.
    cells: list[tuple[str, bool]]
    answered: bool

    @property
    def is_option_question(self) -> bool:
        return self.question.type in Question.OPTION_TYPES


def format_answer(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(format_value(entry) for entry in value)
    return format_value(value)


def question_views(
    form: ResponseForm, questions: list[Question], outputs: list[ItemOutput]
) -> list[QuestionView]:
    views = []
    for number, question in enumerate(questions, start=1):
        suggestions = []
        cells = []
        reference = None
        for output in outputs:
            if output.error is not None or question.key not in output.answers:
                cells.append(("", False))
                continue
            value = output.answers[question.key]
            if reference is None:
                reference = comparable(value)
            differs = comparable(value) != reference
            suggestions.append(
                Suggestion(model=output.model, answer=format_answer(value), differs=differs)
            )
            cells.append((format_answer(value), differs))
        if question.type == Question.Type.RANKING:
            rank_fields = [
                (option, form[rank_field_name(question, index)])
                for index, option in enumerate(question.choices)
            ]
            bound = None
            answered = any(f.value() not in (None, "") for _, f in rank_fields)
        else:
            rank_fields = []
            bound = form[answer_field_name(question)]
            answered = bound.value() not in (None, "", [])
        views.append(
            QuestionView(
                question=question,
                number=number,
                field=bound,
                rank_fields=rank_fields,
                suggestions=suggestions,
                cells=cells,
                answered=answered,
            )
        )
    return views
