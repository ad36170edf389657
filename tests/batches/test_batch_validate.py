"""The validation task: every OpenAI error code, triggered by a file, in line order."""

from __future__ import annotations

import gc
import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django_q.models import OrmQ

from batches import services, tasks
from batches.models import Batch, File
from batches.validation import custom_id_key, iter_lines
from inference.models import RegisteredModel
from tests.batches.conftest import jsonl
from tests.conftest import chat_line

pytestmark = pytest.mark.django_db

MakeFile = Callable[..., File]
MakeBatch = Callable[..., Batch]


@pytest.fixture
def validate(
    make_file: MakeFile, make_batch: MakeBatch, registered_model: RegisteredModel
) -> Callable[..., Batch]:
    """Upload ``lines`` as the owner's batch file, create a batch on it and validate it."""

    def run(lines: list[Any] | bytes, *, endpoint: str = "/v1/chat/completions") -> Batch:
        content = lines if isinstance(lines, bytes) else jsonl(lines)
        file = make_file(content)
        batch = make_batch(input_file_id=file.id, endpoint=endpoint)
        return services.batch_validate(batch_id=batch.id)

    return run


def errors_of(batch: Batch) -> list[dict[str, Any]]:
    assert batch.status == Batch.Status.FAILED
    assert batch.failed_at is not None
    assert batch.errors is not None and batch.errors["object"] == "list"
    data: list[dict[str, Any]] = batch.errors["data"]
    return data


def only_error(batch: Batch) -> dict[str, Any]:
    errors = errors_of(batch)
    assert len(errors) == 1, errors
    return errors[0]


# --- A valid file ---------------------------------------------------------------------------


def test_a_valid_file_moves_the_batch_to_in_progress_with_total_and_model(
    validate: Callable[..., Batch], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        batch = validate([chat_line("a"), chat_line("b"), chat_line("c")])

    assert batch.status == Batch.Status.IN_PROGRESS
    assert batch.in_progress_at is not None
    assert batch.request_total == 3
    assert batch.model == "tiny-chat"
    assert batch.errors is None
    # A GPU worker is woken for it.
    assert OrmQ.objects.filter(key="gpu").count() == 1


def test_it_accepts_a_byte_order_mark_crlf_blank_lines_and_no_final_newline(
    validate: Callable[..., Batch],
) -> None:
    content = b"\xef\xbb\xbf" + jsonl([chat_line("a")]).replace(b"\n", b"\r\n") + b"\n\n"
    content += jsonl([chat_line("b")]).rstrip(b"\n")

    batch = validate(content)

    assert batch.status == Batch.Status.IN_PROGRESS
    assert batch.request_total == 2


def test_it_validates_completions_and_embeddings_batches(
    validate: Callable[..., Batch],
) -> None:
    completion = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "tiny-chat", "prompt": "Once"},
    }
    embedding = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "tiny-chat", "input": "Once"},
    }

    assert validate([completion], endpoint="/v1/completions").status == "in_progress"
    assert validate([embedding], endpoint="/v1/embeddings").status == "in_progress"


def test_the_task_entry_point_validates_by_id(
    make_file: MakeFile, make_batch: MakeBatch, registered_model: RegisteredModel
) -> None:
    batch = make_batch(input_file_id=make_file(jsonl([chat_line("a")])).id)

    tasks.validate_batch(batch.id)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.IN_PROGRESS


def test_it_leaves_a_batch_cancelled_during_validation_alone(
    make_file: MakeFile, make_batch: MakeBatch, registered_model: RegisteredModel
) -> None:
    batch = make_batch("cancelled", input_file_id=make_file(jsonl([chat_line("a")])).id)

    assert services.batch_validate(batch_id=batch.id).status == Batch.Status.CANCELLED


# --- One test per code ----------------------------------------------------------------------


def test_invalid_json_line(validate: Callable[..., Batch]) -> None:
    batch = validate([chat_line("a"), b'{"custom_id": "b", "method": '])

    assert only_error(batch) == {
        "code": "invalid_json_line",
        "message": "This line is not parseable as valid JSON.",
        "param": None,
        "line": 2,
    }


@pytest.mark.parametrize("line", [b'{"a": "\x00"}', b"[" * 100_000])
def test_hostile_lines_are_invalid_json_not_a_crash(
    validate: Callable[..., Batch], line: bytes
) -> None:
    assert only_error(validate([line]))["code"] == "invalid_json_line"


@pytest.mark.parametrize(
    "line",
    [
        b'{"custom_id": "a", "x": NaN}',
        b'{"custom_id": "a", "x": -Infinity}',
        b'{"custom_id": "\\ud800"}',  # a lone surrogate: no UTF-8 string can hold it
    ],
)
def test_python_only_json_is_invalid_json(validate: Callable[..., Batch], line: bytes) -> None:
    assert only_error(validate([line]))["code"] == "invalid_json_line"


def test_brackets_inside_strings_are_not_nesting(validate: Callable[..., Batch]) -> None:
    content = '[{ "quoted \\" [{' * 40
    line = chat_line("a", messages=[{"role": "user", "content": content}])

    assert validate([line]).status == Batch.Status.IN_PROGRESS


def test_many_shallow_brackets_are_not_deep_nesting(validate: Callable[..., Batch]) -> None:
    line = chat_line("a", messages=[{"role": "user", "content": "hi"}] * 100)

    assert validate([line]).status == Batch.Status.IN_PROGRESS


@pytest.mark.parametrize("field", ["custom_id", "method", "url", "body"])
def test_missing_required_parameter(validate: Callable[..., Batch], field: str) -> None:
    line = chat_line("a")
    del line[field]

    assert only_error(validate([line])) == {
        "code": "missing_required_parameter",
        "message": f"Missing required parameter: '{field}'.",
        "param": field,
        "line": 1,
    }


def test_invalid_url(validate: Callable[..., Batch]) -> None:
    line = {**chat_line("a"), "url": "/v1/completions"}

    assert only_error(validate([line])) == {
        "code": "invalid_url",
        "message": "The URL provided for this request does not match the batch endpoint.",
        "param": "url",
        "line": 1,
    }


def test_duplicate_custom_id(validate: Callable[..., Batch]) -> None:
    batch = validate([chat_line("a"), chat_line("b"), chat_line("a")])

    assert only_error(batch) == {
        "code": "duplicate_custom_id",
        "message": "The custom_id for this request is a duplicate of another request.",
        "param": "custom_id",
        "line": 3,
    }


def test_custom_ids_that_differ_only_in_unicode_normalization_are_duplicates(
    validate: Callable[..., Batch],
) -> None:
    batch = validate([chat_line("caf\u00e9"), chat_line("cafe\u0301")])

    assert only_error(batch)["code"] == "duplicate_custom_id"


def test_streaming_unsupported(validate: Callable[..., Batch]) -> None:
    assert only_error(validate([chat_line("a", stream=True)])) == {
        "code": "streaming_unsupported",
        "message": "Chat Completions: Streaming is not supported in the Batch API.",
        "param": "body.stream",
        "line": 1,
    }


def test_model_not_found(validate: Callable[..., Batch]) -> None:
    assert only_error(validate([chat_line("a", model="gpt-9")])) == {
        "code": "model_not_found",
        "message": "The provided model 'gpt-9' is not supported by the Batch API.",
        "param": "body.model",
        "line": 1,
    }


def test_a_disabled_model_is_not_found(
    validate: Callable[..., Batch], registered_model: RegisteredModel
) -> None:
    RegisteredModel.objects.filter(pk=registered_model.pk).update(enabled=False)

    assert only_error(validate([chat_line("a")]))["code"] == "model_not_found"


def test_missing_model(validate: Callable[..., Batch]) -> None:
    line = chat_line("a")
    del line["body"]["model"]

    assert only_error(validate([line])) == {
        "code": "invalid_request",
        "message": "Model parameter is required.",
        "param": "body.model",
        "line": 1,
    }


@pytest.mark.parametrize(
    ("endpoint", "field", "label"),
    [
        ("/v1/chat/completions", "messages", "Messages"),
        ("/v1/completions", "prompt", "Prompt"),
        ("/v1/embeddings", "input", "Input"),
    ],
)
def test_missing_input(
    validate: Callable[..., Batch], endpoint: str, field: str, label: str
) -> None:
    line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": {"model": "tiny-chat"}}

    assert only_error(validate([line], endpoint=endpoint)) == {
        "code": "invalid_request",
        "message": f"{label} parameter is required.",
        "param": f"body.{field}",
        "line": 1,
    }


def test_method_other_than_post(validate: Callable[..., Batch]) -> None:
    error = only_error(validate([{**chat_line("a"), "method": "GET"}]))

    assert (error["code"], error["param"], error["line"]) == ("invalid_request", "method", 1)
    assert "only POST is supported" in error["message"]


def test_several_models_in_one_file(validate: Callable[..., Batch]) -> None:
    RegisteredModel.objects.create(name="other-chat", source="/nonexistent")

    error = only_error(validate([chat_line("a"), chat_line("b", model="other-chat")]))

    assert (error["code"], error["param"], error["line"]) == ("invalid_request", "body.model", 2)
    assert error["message"] == (
        "All requests in a batch must use the same model: line 2 uses 'other-chat' but line 1 "
        "uses 'tiny-chat'."
    )


@override_settings(BATCH_MAX_REQUESTS=3)
def test_more_requests_than_the_maximum(validate: Callable[..., Batch]) -> None:
    error = only_error(validate([chat_line(str(i)) for i in range(5)]))

    assert (error["code"], error["param"], error["line"]) == ("invalid_request", None, 4)
    assert error["message"] == "The input file contains more than the maximum of 3 requests."


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(validate: Callable[..., Batch], content: bytes) -> None:
    error = only_error(validate(content))

    assert (error["code"], error["param"], error["line"]) == ("invalid_request", None, None)
    assert "empty" in error["message"]


def test_a_line_that_is_not_utf8(validate: Callable[..., Batch]) -> None:
    batch = validate([chat_line("a"), b'{"custom_id": "caf\xe9"}'])

    error = only_error(batch)
    assert (error["code"], error["line"]) == ("invalid_request", 2)
    assert "UTF-8" in error["message"]


@override_settings(BATCH_MAX_QUEUED_REQUESTS_PER_OWNER=2)
def test_a_valid_file_that_would_pass_the_owners_queue_cap(validate: Callable[..., Batch]) -> None:
    error = only_error(validate([chat_line("a"), chat_line("b"), chat_line("c")]))

    assert (error["code"], error["param"], error["line"]) == ("request_limit_exceeded", None, None)


def test_an_input_file_that_does_not_exist(make_batch: MakeBatch) -> None:
    batch = make_batch(input_file_id="file-nope")

    assert only_error(services.batch_validate(batch_id=batch.id)) == {
        "code": "invalid_request",
        "message": "Cannot find file file-nope, or it does not belong to you.",
        "param": "file_id",
        "line": None,
    }


def test_an_input_file_of_another_owner(
    make_file: MakeFile, make_batch: MakeBatch, other_owner: User
) -> None:
    theirs = make_file(jsonl([chat_line("a")]), user=other_owner)
    batch = make_batch(input_file_id=theirs.id)

    error = only_error(services.batch_validate(batch_id=batch.id))

    assert error["message"] == f"Cannot find file {theirs.id}, or it does not belong to you."
    assert error["param"] == "file_id"


def test_an_input_file_uploaded_for_another_purpose(
    make_file: MakeFile, make_batch: MakeBatch
) -> None:
    file = make_file(jsonl([chat_line("a")]), purpose="user_data")

    error = only_error(services.batch_validate(batch_id=make_batch(input_file_id=file.id).id))

    assert (error["code"], error["param"]) == ("invalid_request", "input_file_id")
    assert "purpose 'batch'" in error["message"]


def test_an_input_file_over_the_size_limit(make_file: MakeFile, make_batch: MakeBatch) -> None:
    file = make_file(jsonl([chat_line("a")]))
    batch = make_batch(input_file_id=file.id)

    with override_settings(BATCH_MAX_INPUT_FILE_BYTES=10):
        error = only_error(services.batch_validate(batch_id=batch.id))

    assert (error["code"], error["param"]) == ("invalid_request", "input_file_id")
    assert "the maximum is 10 bytes" in error["message"]


def test_an_input_file_whose_content_has_gone(make_file: MakeFile, make_batch: MakeBatch) -> None:
    file = make_file(jsonl([chat_line("a")]))
    Path(file.content.path).unlink()

    error = only_error(services.batch_validate(batch_id=make_batch(input_file_id=file.id).id))

    assert (error["code"], error["param"]) == ("invalid_request", "input_file_id")
    assert "missing" in error["message"]


# --- Shapes OpenAI does not name, all answered rather than crashing -------------------------


@pytest.mark.parametrize(
    ("line", "code", "param"),
    [
        (b"[1, 2]", "invalid_request", None),
        ({**chat_line("a"), "custom_id": 7}, "invalid_type", "custom_id"),
        ({**chat_line("a"), "custom_id": "  "}, "invalid_value", "custom_id"),
        ({**chat_line("a"), "body": "hello"}, "invalid_request", "body"),
        (
            {**chat_line("a"), "body": {"model": ["tiny-chat"], "messages": []}},
            "invalid_type",
            "body.model",
        ),
    ],
)
def test_odd_lines_get_a_clear_error(
    validate: Callable[..., Batch], line: Any, code: str, param: str | None
) -> None:
    error = only_error(validate([line]))

    assert (error["code"], error["param"], error["line"]) == (code, param, 1)


# --- Every problem, in line order, up to a bound --------------------------------------------


def test_it_reports_every_problem_in_line_order_not_only_the_first(
    validate: Callable[..., Batch],
) -> None:
    batch = validate(
        [
            chat_line("a"),
            b"not json",
            {**chat_line("c"), "url": "/v1/embeddings"},
            chat_line("a", stream=True),
            chat_line("e", model="gpt-9"),
        ]
    )

    assert [(e["line"], e["code"]) for e in errors_of(batch)] == [
        (2, "invalid_json_line"),
        (3, "invalid_url"),
        (4, "duplicate_custom_id"),
        (4, "streaming_unsupported"),
        (5, "model_not_found"),
    ]


@override_settings(BATCH_MAX_VALIDATION_ERRORS=3)
def test_it_stops_at_the_error_bound(validate: Callable[..., Batch]) -> None:
    batch = validate([b"bad"] * 10)

    assert [e["line"] for e in errors_of(batch)] == [1, 2, 3]


# --- Streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1 << 20])
def test_iter_lines_splits_the_same_whatever_the_read_size(chunk_size: int) -> None:
    content = b"first\n\nsecond line\n" + b"x" * 50 + b"\nlast"

    lines = list(iter_lines(io.BytesIO(content), chunk_size=chunk_size))

    assert lines == [b"first", b"", b"second line", b"x" * 50, b"last"]


def test_iter_lines_yields_nothing_for_an_empty_stream() -> None:
    assert list(iter_lines(io.BytesIO(b""))) == []


def test_duplicate_keys_are_at_most_16_bytes_and_short_and_long_ids_never_collide() -> None:
    short = "request-1"
    long_id = "a-custom-id-longer-than-a-digest"
    assert custom_id_key(short) == short.encode()
    assert len(custom_id_key(long_id)) == 16 and custom_id_key(long_id) != long_id.encode()
    # An id of exactly a digest's length is hashed too, so it can never equal another's digest.
    assert custom_id_key("x" * 16) != b"x" * 16
    # Equal once normalized: NFC of a decomposed "é" (e + combining acute) is the composed one.
    assert custom_id_key("caf\u00e9") == custom_id_key("cafe\u0301")
    assert custom_id_key("caf\u00e9" * 9) == custom_id_key("cafe\u0301" * 9)


def _peak_validation_bytes(
    lines: int, make_file: MakeFile, make_batch: MakeBatch
) -> tuple[int, int]:
    """(file size, peak bytes Python allocated while validating a file of ``lines`` requests)."""
    padding = "p" * 200  # ~330 bytes a line, so the file dwarfs any per-line bookkeeping
    content = jsonl(
        chat_line(f"request-{i:06d}", messages=[{"role": "user", "content": padding}])
        for i in range(lines)
    )
    file = make_file(content)
    size = len(content)
    batch = make_batch(input_file_id=file.id)
    del content
    gc.collect()
    tracemalloc.start()
    try:
        validated = services.batch_validate(batch_id=batch.id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert validated.status == Batch.Status.IN_PROGRESS
    assert validated.request_total == lines
    return size, peak


def test_a_50000_line_file_validates_in_memory_that_does_not_grow_with_the_file(
    make_file: MakeFile,
    make_batch: MakeBatch,
    registered_model: RegisteredModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small_size, small_peak = _peak_validation_bytes(5_000, make_file, make_batch)
    large_size, large_peak = _peak_validation_bytes(50_000, make_file, make_batch)

    growth = large_peak - small_peak
    with capsys.disabled():
        print(
            f"\nvalidation peak: {small_size:,} B file ({5_000:,} lines) -> {small_peak:,} B; "
            f"{large_size:,} B file ({50_000:,} lines) -> {large_peak:,} B; "
            f"growth {growth:,} B = {growth / 45_000:.0f} B per extra line"
        )
    # All that grows is the set of 16-byte custom_id digests: about 90 bytes a request (a
    # 49-byte bytes object and its set slot), whatever the size of the request's line.
    assert growth / 45_000 < 120
    assert growth < (large_size - small_size) / 3
