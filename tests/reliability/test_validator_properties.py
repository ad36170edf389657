"""Properties of the JSONL validator (batches.validation), over inputs Hypothesis makes up.

- Any bytes give a ValidationResult, never an exception, with errors in line order.
- Any well-formed file (whatever ids, bodies, blank lines, CRLF or BOM) passes.
- A file with some lines broken reports errors on exactly those lines, in order.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batches.validation import _UNPARSED, _strict_loads, iter_lines, validate_lines

ENDPOINT = "/v1/chat/completions"
MODELS = {"tiny-chat"}
# `make fuzz` raises this for a longer run.
MAX_EXAMPLES = int(os.environ.get("PROPERTY_MAX_EXAMPLES", "300"))
PROPERTY_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Structured inputs cost more to draw: fewer of them.
STRUCTURED_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=max(MAX_EXAMPLES // 5, 20))


def run(content: bytes, *, max_errors: int = 1_000, max_requests: int = 50_000) -> Any:
    return validate_lines(
        iter_lines(io.BytesIO(content), chunk_size=7),  # tiny blocks: lines span many reads
        endpoint=ENDPOINT,
        model_exists=MODELS.__contains__,
        max_requests=max_requests,
        max_errors=max_errors,
    )


def check_well_formed(result: Any, *, lines: int, max_errors: int = 1_000) -> None:
    numbers = [error.line for error in result.errors]
    assert len(numbers) <= max_errors
    assert all(n is None or 1 <= n <= lines for n in numbers)
    located = [n for n in numbers if n is not None]
    assert located == sorted(located), "errors come in line order"
    for error in result.errors:
        assert error.code and error.message
        assert set(error.as_dict()) == {"code", "message", "param", "line"}


# --- Anything at all --------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
request_keys = st.sampled_from(["custom_id", "method", "url", "body", "model", "messages"])
near_requests = st.dictionaries(request_keys | st.text(max_size=8), json_values, max_size=6)


def _line_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


lines_of_anything = st.lists(
    st.binary(max_size=80)
    | near_requests.map(_line_bytes)
    | json_values.map(_line_bytes)
    | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    max_size=12,
)


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=600))
@example(content=b"\xef\xbb\xbf")
@example(content=b'{"custom_id": "\\ud800"}')
@example(content=b"[" * 10_000)
@example(content=b'{"a": NaN}')
def test_any_bytes_give_a_result_and_never_an_exception(content: bytes) -> None:
    result = run(content)
    check_well_formed(result, lines=content.count(b"\n") + 1)


@STRUCTURED_SETTINGS
@given(lines=lines_of_anything, separator=st.sampled_from([b"\n", b"\r\n"]))
def test_lines_that_look_almost_like_requests_give_a_result_in_line_order(
    lines: list[bytes], separator: bytes
) -> None:
    content = separator.join(line.replace(b"\n", b" ") for line in lines)
    result = run(content)
    check_well_formed(result, lines=max(len(lines), 1))


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=400), max_errors=st.integers(1, 5))
def test_errors_stop_at_the_cap(content: bytes, max_errors: int) -> None:
    result = run(content, max_errors=max_errors)
    assert len(result.errors) <= max_errors


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=400), chunk_size=st.integers(1, 50))
def test_iter_lines_splits_exactly_like_bytes_split(content: bytes, chunk_size: int) -> None:
    expected = content.split(b"\n")
    if expected[-1] == b"":
        expected.pop()  # a final newline ends the last line; it does not start another
    assert list(iter_lines(io.BytesIO(content), chunk_size=chunk_size)) == expected


# --- Well-formed files ------------------------------------------------------------------------


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


custom_ids = st.text(min_size=1, max_size=30).filter(lambda s: bool(s.strip()))
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}
    ),
    min_size=1,
    max_size=3,
)
sampling = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(1, 4096),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "n": st.integers(1, 4),
        "stream": st.just(False),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    },
)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, int]:
    ids = draw(st.lists(custom_ids, min_size=1, max_size=15, unique_by=_nfc))
    lines: list[bytes] = []
    for custom_id in ids:
        request = {
            "custom_id": custom_id,
            "method": draw(st.sampled_from(["POST", "post", "Post"])),
            "url": ENDPOINT,
            "body": {"model": "tiny-chat", "messages": draw(messages), **draw(sampling)},
        }
        keys = draw(st.permutations(list(request)))
        text = json.dumps({key: request[key] for key in keys}, ensure_ascii=draw(st.booleans()))
        lines.append(text.encode())
        lines.extend(b" \t" for _ in range(draw(st.integers(0, 1))))  # blank lines are skipped
    separator = draw(st.sampled_from([b"\n", b"\r\n"]))
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    ending = draw(st.sampled_from([b"", separator]))
    return bom + separator.join(lines) + ending, len(ids)


@STRUCTURED_SETTINGS
@given(file=valid_files())
def test_every_well_formed_file_passes(file: tuple[bytes, int]) -> None:
    content, requests = file
    result = run(content)
    assert result.errors == []
    assert result.request_count == requests
    assert result.model == "tiny-chat"


breakages = st.sampled_from(
    [
        lambda r: {k: v for k, v in r.items() if k != "custom_id"},
        lambda r: {k: v for k, v in r.items() if k != "body"},
        lambda r: {**r, "custom_id": 7},
        lambda r: {**r, "custom_id": " "},
        lambda r: {**r, "method": "GET"},
        lambda r: {**r, "url": "/v1/embeddings"},
        lambda r: {**r, "body": {**r["body"], "stream": True}},
        lambda r: {**r, "body": {**r["body"], "model": "unknown"}},
        lambda r: {**r, "body": {"model": "tiny-chat"}},
        lambda r: [r],
        lambda r: json.dumps(r)[:-1],  # truncated: a string, dumped again below, is still JSON
    ]
)


@STRUCTURED_SETTINGS
@given(
    size=st.integers(2, 12),
    broken=st.data(),
)
def test_a_file_with_broken_lines_reports_errors_on_exactly_those_lines_in_order(
    size: int, broken: st.DataObject
) -> None:
    requests = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(size)
    ]
    targets = broken.draw(st.sets(st.integers(0, size - 1), min_size=1))
    lines: list[bytes] = []
    for index, request in enumerate(requests):
        if index in targets:
            damaged = broken.draw(breakages)(request)
            raw = damaged.encode() if isinstance(damaged, str) else json.dumps(damaged).encode()
        else:
            raw = json.dumps(request).encode()
        lines.append(raw)

    result = run(b"\n".join(lines) + b"\n")

    check_well_formed(result, lines=size)
    assert {error.line for error in result.errors} == {index + 1 for index in targets}


# --- The fast parser reads what json.loads reads ----------------------------------------------

finite_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@PROPERTY_SETTINGS
@given(value=finite_json_values, ascii_only=st.booleans())
def test_the_fast_parser_agrees_with_json_loads_or_leaves_the_line_to_it(
    value: Any, ascii_only: bool
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")

    parsed = _strict_loads(raw)

    if parsed is _UNPARSED:
        # Refused (a lone surrogate, an unpaired escape): the slow path decides, as it did.
        return
    assert parsed == json.loads(raw)
    assert json.dumps(parsed, sort_keys=True) == json.dumps(json.loads(raw), sort_keys=True)
