"""Corpus files that pass validation but hold requests the worker must refuse one by one.

The request -> SamplingParams mapping (inference.sampling) must refuse exactly the requests the
corpus table names, with the named OpenAI code, and accept the others; the real engine with the
tiny model then writes one error line for each refused request and an answer for the rest,
without failing the chunk. Context length is known only to a loaded engine: it is checked there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inference import sampling
from tests.reliability.test_hostile_input import CORPUS, EXPECTED

ENDPOINT = sampling.CHAT
NEEDS_ENGINE = {"context_length_exceeded"}
REQUEST_LEVEL = sorted(name for name, expected in EXPECTED.items() if "requests" in expected)


def corpus_requests(name: str) -> list[tuple[str, dict[str, Any]]]:
    # Only files that validate come here: each line is a JSON object with a string custom_id.
    requests = []
    for raw in (CORPUS / name).read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines():
        if raw.strip():
            line = json.loads(raw)
            requests.append((line["custom_id"], line["body"]))
    return requests


def map_request(body: dict[str, Any]) -> None:
    sampling.sampling_options_from_body(body, endpoint=ENDPOINT, defaults={}, max_model_len=512)
    sampling.chat_messages_from_body(body)


@pytest.mark.parametrize("name", REQUEST_LEVEL)
def test_the_mapping_refuses_exactly_the_requests_the_corpus_names(name: str) -> None:
    expected: dict[str, str] = EXPECTED[name].get("request_errors", {})
    requests = corpus_requests(name)
    assert len(requests) == EXPECTED[name]["requests"]

    for custom_id, body in requests:
        code = expected.get(custom_id)
        if code is None or code in NEEDS_ENGINE:
            map_request(body)
            continue
        with pytest.raises(sampling.RequestError) as refused:
            map_request(body)
        assert refused.value.code == code, (custom_id, refused.value.message)
        error = refused.value.as_error()
        assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.engine
def test_the_engine_answers_each_hostile_request_with_its_own_error_line(
    tiny_model_path: Path,
) -> None:
    from inference.engine import Engine

    engine = Engine(
        source=str(tiny_model_path),
        engine_args={"max_model_len": 512},
        model_name="tiny-chat",
        default_sampling={"max_tokens": 4},
    )
    try:
        chunk: list[tuple[str, dict[str, Any]]] = []
        expected: dict[str, str | None] = {}
        for name in REQUEST_LEVEL:
            for custom_id, body in corpus_requests(name):
                unique = f"{name}:{custom_id}"
                chunk.append((unique, {**body, "max_tokens": body.get("max_tokens", 4)}))
                expected[unique] = EXPECTED[name].get("request_errors", {}).get(custom_id)
        huge = {"messages": [{"role": "user", "content": "word " * 2_000_000}]}
        chunk.append(("10 MB line", {"model": "tiny-chat", **huge}))
        expected["10 MB line"] = "context_length_exceeded"

        results = engine.run_chunk(ENDPOINT, chunk)  # one chunk: a bad request must not sink it
    finally:
        engine.close()

    assert [result.custom_id for result in results] == [custom_id for custom_id, _ in chunk]
    for result in results:
        code = expected[result.custom_id]
        if code is None:
            assert result.ok, result.line
            assert result.line["response"]["status_code"] == 200
            continue
        assert not result.ok, result.custom_id
        assert result.line["error"]["code"] == code, (result.custom_id, result.line["error"])
        assert result.line["response"]["status_code"] == 400
        assert result.line["response"]["body"]["error"]["code"] == code
