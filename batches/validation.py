"""Validation of a batch input file, line by line, as OpenAI's Batch API does it.

The file is streamed: only the set of custom_id digests grows with the file (16 bytes each).
Every problem is reported in line order, up to a bound, with OpenAI's codes and wording.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

ENDPOINT_INPUT_FIELD = {
    "/v1/chat/completions": ("messages", "Messages"),
    "/v1/completions": ("prompt", "Prompt"),
    "/v1/embeddings": ("input", "Input"),
}
ENDPOINT_LABEL = {
    "/v1/chat/completions": "Chat Completions",
    "/v1/completions": "Completions",
    "/v1/embeddings": "Embeddings",
}
_JSON_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}
# Nesting deeper than this is refused before json.loads can hit Python's recursion limit.
MAX_JSON_DEPTH = 64
# \uD800-\uDFFF escapes: only the lines that have one pay for the UTF-8 check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), "a value")


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    param: str | None
    line: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class ValidationResult:
    errors: list[LineError] = field(default_factory=list)
    request_count: int = 0
    model: str | None = None


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def iter_lines(stream: Readable, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the file's lines (without the newline), reading a bounded block at a time.

    Only the newly read block is searched for newlines, so a very long line costs linear time.
    """
    pending: list[bytes] = []
    while block := stream.read(chunk_size):
        start = 0
        if pending and (end := block.find(b"\n")) != -1:
            # The end of a line that began in an earlier block.
            pending.append(block[:end])
            yield b"".join(pending)
            pending.clear()
            start = end + 1
        while (end := block.find(b"\n", start)) != -1:
            yield block[start:end]
            start = end + 1
        if start < len(block):
            pending.append(block[start:])
    if pending:
        yield b"".join(pending)


# Every byte but the opening brackets: deleting them leaves only the brackets to count.
_ALL_BUT_OPENING_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[{")


def _too_deep(raw: bytes) -> bool:
    # A cheap bound on nesting, counted outside strings, so hostile files cannot blow the stack.
    # A line with fewer opening brackets than the limit cannot nest deeper. Counted in one pass
    # at C speed (translate: half the time of two bytes.count, which were a third of all
    # validation in manage.py bench), while the byte loop below cost 40x a json.loads per line.
    if len(raw.translate(None, _ALL_BUT_OPENING_BRACKETS)) <= MAX_JSON_DEPTH:
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _not_json_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity: Python's json module reads them, but they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


_DIGEST_BYTES = 16


def custom_id_key(custom_id: str) -> bytes:
    """What duplicates are found by: at most 16 bytes per id, whatever its length.

    NFC first: two ids that differ only in Unicode normalization look the same to every person
    and most tools that join on them, so they count as duplicates (ASCII is NFC already). Ids
    shorter than a digest are their own key, which costs no more memory than their digest
    (keys of either kind cannot collide: their lengths differ); longer ones are hashed.
    """
    normalized = custom_id if custom_id.isascii() else unicodedata.normalize("NFC", custom_id)
    encoded = normalized.encode()
    if len(encoded) < _DIGEST_BYTES:
        return encoded
    return hashlib.blake2b(encoded, digest_size=_DIGEST_BYTES).digest()


class _Collector:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.errors: list[LineError] = []

    @property
    def full(self) -> bool:
        return len(self.errors) >= self.limit

    def add(self, code: str, message: str, *, param: str | None, line: int | None) -> None:
        if not self.full:
            self.errors.append(LineError(code=code, message=message, param=param, line=line))


# What the parsers below return for a line that is not a JSON document.
_UNPARSED = object()
_strict_decoder = msgspec.json.Decoder()


def _strict_loads(raw: bytes) -> Any:
    """The line's JSON value, or _UNPARSED for anything but plain, valid JSON.

    msgspec refuses what is not JSON (NaN, lone surrogates, bad UTF-8, numbers out of range)
    and parses the rest to the same values as json.loads, at several times its speed.
    """
    if _too_deep(raw):
        return _UNPARSED
    try:
        return _strict_decoder.decode(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):  # ValueError: bad UTF-8
        return _UNPARSED


def _parse_with_reason(raw: bytes, *, line: int, errors: _Collector) -> Any:
    """The slow path for lines msgspec refused: parse again, and report why it fails."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        errors.add(
            "invalid_request",
            "This line is not valid UTF-8 text; batch input files must be encoded in UTF-8.",
            param=None,
            line=line,
        )
        return _UNPARSED
    if "\x00" in text or _too_deep(raw):
        errors.add(
            "invalid_json_line", "This line is not parseable as valid JSON.", param=None, line=line
        )
        return _UNPARSED
    try:
        request = json.loads(text, parse_constant=_not_json_constant)
        if _SURROGATE_ESCAPE.search(raw):
            # A lone escaped surrogate parses, but its string cannot be written as UTF-8.
            json.dumps(request, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        errors.add(
            "invalid_json_line", "This line is not parseable as valid JSON.", param=None, line=line
        )
        return _UNPARSED
    return request


def validate_lines(
    lines: Iterable[bytes],
    *,
    endpoint: str,
    model_exists: Callable[[str], bool],
    max_requests: int,
    max_errors: int,
) -> ValidationResult:
    """Check every line of a batch input file; return the problems found and the request count."""
    result = ValidationResult()
    errors = _Collector(max_errors)
    seen_ids: set[bytes] = set()
    known_models: dict[str, bool] = {}
    first_model_line = 0
    input_field, input_label = ENDPOINT_INPUT_FIELD[endpoint]
    endpoint_label = ENDPOINT_LABEL[endpoint]
    too_many_reported = False

    for number, raw in enumerate(lines, start=1):
        if errors.full:  # the bound reached: the rest of the file cannot change the outcome
            break
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # A UTF-8 byte order mark, as Windows tools write it.
        if not raw.strip():
            continue
        result.request_count += 1
        if result.request_count > max_requests and not too_many_reported:
            too_many_reported = True
            errors.add(
                "invalid_request",
                f"The input file contains more than the maximum of {max_requests:,} requests.",
                param=None,
                line=number,
            )
        # Strict JSON at C speed for the lines that are fine; a line it refuses goes through the
        # checks below, which say what exactly is wrong with it.
        request = _strict_loads(raw)
        if request is _UNPARSED:
            request = _parse_with_reason(raw, line=number, errors=errors)
            if request is _UNPARSED:
                continue
        if not isinstance(request, dict):
            errors.add(
                "invalid_request",
                f"Each line must be a JSON object, but this line is {json_type_name(request)}.",
                param=None,
                line=number,
            )
            continue

        for name in ("custom_id", "method", "url", "body"):
            if name not in request:
                errors.add(
                    "missing_required_parameter",
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    line=number,
                )

        custom_id = request.get("custom_id")
        if "custom_id" in request:
            if not isinstance(custom_id, str):
                errors.add(
                    "invalid_type",
                    "Invalid type for 'custom_id': expected a string, but got "
                    f"{json_type_name(custom_id)} instead.",
                    param="custom_id",
                    line=number,
                )
            elif not custom_id.strip():
                errors.add(
                    "invalid_value",
                    "Invalid value for 'custom_id': it must be a non-empty string.",
                    param="custom_id",
                    line=number,
                )
            else:
                key = custom_id_key(custom_id)
                if key in seen_ids:
                    errors.add(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request.",
                        param="custom_id",
                        line=number,
                    )
                else:
                    seen_ids.add(key)

        method = request.get("method")
        if "method" in request and (not isinstance(method, str) or method.upper() != "POST"):
            errors.add(
                "invalid_request",
                f"Invalid value for 'method': only POST is supported, got {json.dumps(method)}.",
                param="method",
                line=number,
            )

        url = request.get("url")
        if "url" in request and url != endpoint:
            errors.add(
                "invalid_url",
                "The URL provided for this request does not match the batch endpoint.",
                param="url",
                line=number,
            )

        body = request.get("body")
        if "body" not in request:
            continue
        if not isinstance(body, dict):
            errors.add(
                "invalid_request",
                f"Invalid type for 'body': expected an object, but got {json_type_name(body)} "
                "instead.",
                param="body",
                line=number,
            )
            continue
        if body.get("stream") is True:
            errors.add(
                "streaming_unsupported",
                f"{endpoint_label}: Streaming is not supported in the Batch API.",
                param="body.stream",
                line=number,
            )
        model = body.get("model")
        if model is None:
            errors.add(
                "invalid_request",
                "Model parameter is required.",
                param="body.model",
                line=number,
            )
        elif not isinstance(model, str):
            errors.add(
                "invalid_type",
                f"Invalid type for 'body.model': expected a string, but got "
                f"{json_type_name(model)} instead.",
                param="body.model",
                line=number,
            )
        else:
            if model not in known_models:
                known_models[model] = model_exists(model)
            if not known_models[model]:
                errors.add(
                    "model_not_found",
                    f"The provided model '{model}' is not supported by the Batch API.",
                    param="body.model",
                    line=number,
                )
            elif result.model is None:
                result.model = model
                first_model_line = number
            elif model != result.model:
                errors.add(
                    "invalid_request",
                    f"All requests in a batch must use the same model: line {number} uses "
                    f"'{model}' but line {first_model_line} uses '{result.model}'.",
                    param="body.model",
                    line=number,
                )
        if body.get(input_field) is None:
            errors.add(
                "invalid_request",
                f"{input_label} parameter is required.",
                param=f"body.{input_field}",
                line=number,
            )

    if result.request_count == 0 and not errors.errors:
        errors.add(
            "invalid_request",
            "The input file is empty: it must contain at least one request line.",
            param=None,
            line=None,
        )
    result.errors = errors.errors
    return result
