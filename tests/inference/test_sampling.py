"""Request body -> vLLM sampling parameters and inputs; OpenAI's errors for what does not map."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.sampling import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RequestError,
    chat_messages_from_body,
    completion_prompts_from_body,
    embedding_inputs_from_body,
    sampling_options_from_body,
    sampling_params_from_body,
)

MESSAGES = [{"role": "user", "content": "Hello"}]


def chat_options(
    defaults: dict[str, Any] | None = None, max_model_len: int | None = 2048, **body: Any
) -> dict[str, Any]:
    return sampling_options_from_body(
        {"model": "m", "messages": MESSAGES, **body},
        endpoint=CHAT,
        defaults=defaults or {},
        max_model_len=max_model_len,
    )


def completion_options(defaults: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    return sampling_options_from_body(
        {"model": "m", "prompt": "Once", **body},
        endpoint=COMPLETIONS,
        defaults=defaults or {},
        max_model_len=2048,
    )


# --- What maps ---------------------------------------------------------------------------------


def test_a_bare_chat_request_leaves_the_length_to_the_context() -> None:
    assert chat_options() == {"max_tokens": None, "n": 1}


def test_a_bare_completion_request_gets_openais_16_tokens() -> None:
    assert completion_options() == {"max_tokens": 16, "n": 1}


def test_it_maps_every_sampling_parameter() -> None:
    options = chat_options(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        n=3,
        stop=["\n", "END"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=4,
        logit_bias={"5": 10, "7": -100},
        ignore_eos=True,
        top_k=20,
        min_p=0.05,
        repetition_penalty=1.1,
    )
    assert options == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 3,
        "stop": ["\n", "END"],
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": 4,
        "logit_bias": {5: 10.0, 7: -100.0},
        "ignore_eos": True,
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
    }


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat_options(max_tokens=9, max_completion_tokens=4)["max_tokens"] == 4


def test_a_single_stop_string_becomes_a_list() -> None:
    assert chat_options(stop="###")["stop"] == ["###"]


def test_chat_logprobs_without_top_logprobs_return_the_chosen_token_only() -> None:
    assert chat_options(logprobs=True)["logprobs"] == 0
    assert "logprobs" not in chat_options(logprobs=False)


def test_completion_logprobs_is_the_number_of_alternatives() -> None:
    assert completion_options(logprobs=3)["logprobs"] == 3


def test_greedy_sampling_with_several_choices_keeps_only_the_top_token() -> None:
    options = chat_options(temperature=0, n=2)
    assert options["top_k"] == 1
    assert options["n"] == 2


def test_top_p_zero_keeps_only_the_most_likely_token() -> None:
    assert 0 < chat_options(top_p=0)["top_p"] < 1e-6


def test_null_fields_mean_the_default() -> None:
    assert chat_options(temperature=None, stop=None, seed=None, n=None) == chat_options()


def test_model_defaults_fill_the_fields_a_request_omits() -> None:
    defaults = {"temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "top_k": 5}
    options = chat_options(defaults, temperature=0.9)
    assert options["temperature"] == 0.9
    assert options["max_tokens"] == 64
    assert options["stop"] == ["\n\n"]
    assert options["top_k"] == 5


def test_a_default_max_tokens_does_not_override_the_requests_max_completion_tokens() -> None:
    assert chat_options({"max_tokens": 64}, max_completion_tokens=3)["max_tokens"] == 3


def test_defaults_that_are_not_sampling_fields_are_ignored() -> None:
    assert chat_options({"n": 4, "logprobs": True}) == chat_options()


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"json_object": True}),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
            {"json": {"type": "object"}},
        ),
    ],
)
def test_response_format_maps_to_structured_outputs(
    response_format: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    assert chat_options(response_format=response_format).get("structured_outputs") == expected


def test_harmless_openai_fields_are_accepted() -> None:
    assert (
        chat_options(
            user="u",
            metadata={"a": "b"},
            store=False,
            stream=False,
            tool_choice="none",
            modalities=["text"],
            tools=None,
            service_tier="auto",
        )
        == chat_options()
    )


def test_it_builds_vllm_sampling_params() -> None:
    params = sampling_params_from_body(
        {
            "messages": MESSAGES,
            "max_tokens": 5,
            "seed": 3,
            "stop": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}},
            },
        },
        endpoint=CHAT,
        defaults={"temperature": 0.7},
        max_model_len=2048,
    )
    assert params.max_tokens == 5
    assert params.seed == 3
    assert params.stop == ["x"]
    assert params.temperature == 0.7
    assert params.structured_outputs is not None
    assert params.structured_outputs.json == {"type": "object"}
    # Each request owns its params, so vLLM's per-request deep copy is skipped.
    assert params.skip_clone is True


# --- What is refused ---------------------------------------------------------------------------

ERROR_CASES = [
    # (body fields, endpoint, code, param)
    ({"max_tokens": -1}, CHAT, "integer_below_min_value", "max_tokens"),
    ({"max_tokens": 0}, CHAT, "integer_below_min_value", "max_tokens"),
    ({"max_completion_tokens": -5}, CHAT, "integer_below_min_value", "max_completion_tokens"),
    ({"max_tokens": 4096}, CHAT, "invalid_value", "max_tokens"),
    ({"max_tokens": "10"}, CHAT, "invalid_type", "max_tokens"),
    ({"max_tokens": 1.5}, CHAT, "invalid_type", "max_tokens"),
    ({"max_tokens": True}, CHAT, "invalid_type", "max_tokens"),
    ({"temperature": -0.1}, CHAT, "decimal_below_min_value", "temperature"),
    ({"temperature": 2.5}, CHAT, "decimal_above_max_value", "temperature"),
    ({"temperature": "hot"}, CHAT, "invalid_type", "temperature"),
    ({"temperature": float("nan")}, CHAT, "invalid_value", "temperature"),
    ({"temperature": float("inf")}, CHAT, "invalid_value", "temperature"),
    ({"top_p": 1.5}, CHAT, "decimal_above_max_value", "top_p"),
    ({"top_p": -1}, CHAT, "decimal_below_min_value", "top_p"),
    ({"n": 0}, CHAT, "integer_below_min_value", "n"),
    ({"n": 17}, CHAT, "integer_above_max_value", "n"),
    ({"n": 10**6}, CHAT, "integer_above_max_value", "n"),
    ({"presence_penalty": 3}, CHAT, "decimal_above_max_value", "presence_penalty"),
    ({"frequency_penalty": -2.5}, CHAT, "decimal_below_min_value", "frequency_penalty"),
    ({"seed": 2**64}, CHAT, "integer_above_max_value", "seed"),
    ({"seed": "7"}, CHAT, "invalid_type", "seed"),
    ({"stop": 5}, CHAT, "invalid_type", "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, CHAT, "array_above_max_length", "stop"),
    ({"stop": ["a", 1]}, CHAT, "invalid_type", "stop[1]"),
    ({"stop": ""}, CHAT, "string_below_min_length", "stop"),
    ({"logprobs": "yes"}, CHAT, "invalid_type", "logprobs"),
    ({"top_logprobs": 3}, CHAT, "invalid_value", "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, CHAT, "integer_above_max_value", "top_logprobs"),
    ({"logprobs": 6}, COMPLETIONS, "integer_above_max_value", "logprobs"),
    ({"logprobs": True}, COMPLETIONS, "invalid_type", "logprobs"),
    ({"logit_bias": [1, 2]}, CHAT, "invalid_type", "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, CHAT, "invalid_value", "logit_bias"),
    ({"logit_bias": {"abc": 1}}, CHAT, "invalid_value", "logit_bias"),
    ({"logit_bias": {"-3": 1}}, CHAT, "invalid_value", "logit_bias"),
    ({"logit_bias": {"5": 101}}, CHAT, "decimal_above_max_value", "logit_bias.5"),
    ({"logit_bias": {"5": "x"}}, CHAT, "invalid_type", "logit_bias.5"),
    ({"logit_bias": {"5": None}}, CHAT, "invalid_type", "logit_bias.5"),
    ({"response_format": "json"}, CHAT, "invalid_type", "response_format"),
    ({"response_format": {}}, CHAT, "missing_required_parameter", "response_format.type"),
    ({"response_format": {"type": "xml"}}, CHAT, "invalid_value", "response_format.type"),
    (
        {"response_format": {"type": "json_schema"}},
        CHAT,
        "missing_required_parameter",
        "response_format.json_schema",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        CHAT,
        "missing_required_parameter",
        "response_format.json_schema.name",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
        CHAT,
        "missing_required_parameter",
        "response_format.json_schema.schema",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": []}}},
        CHAT,
        "invalid_type",
        "response_format.json_schema.schema",
    ),
    ({"tools": [{"type": "function"}]}, CHAT, "unsupported_parameter", "tools"),
    ({"functions": [{"name": "f"}]}, CHAT, "unsupported_parameter", "functions"),
    ({"tool_choice": "auto"}, CHAT, "unsupported_parameter", "tool_choice"),
    ({"audio": {"voice": "x"}}, CHAT, "unsupported_parameter", "audio"),
    ({"modalities": ["text", "audio"]}, CHAT, "unsupported_parameter", "modalities"),
    ({"reasoning_effort": "high"}, CHAT, "unsupported_parameter", "reasoning_effort"),
    ({"stream": True}, CHAT, "invalid_value", "stream"),
    ({"frobnicate": 1}, CHAT, "unknown_parameter", "frobnicate"),
    ({"top_logprobs": 1}, COMPLETIONS, "unknown_parameter", "top_logprobs"),
    ({"echo": True}, COMPLETIONS, "unsupported_parameter", "echo"),
    ({"suffix": "end"}, COMPLETIONS, "unsupported_parameter", "suffix"),
    ({"best_of": 3}, COMPLETIONS, "unsupported_value", "best_of"),
    ({"ignore_eos": "yes"}, CHAT, "invalid_type", "ignore_eos"),
    ({"top_k": -2}, CHAT, "integer_below_min_value", "top_k"),
    ({"min_p": 2}, CHAT, "decimal_above_max_value", "min_p"),
    ({"repetition_penalty": 0}, CHAT, "decimal_below_min_value", "repetition_penalty"),
]


@pytest.mark.parametrize(("fields", "endpoint", "code", "param"), ERROR_CASES)
def test_it_refuses_invalid_parameters_with_openais_error(
    fields: dict[str, Any], endpoint: str, code: str, param: str
) -> None:
    body = {"messages": MESSAGES} if endpoint == CHAT else {"prompt": "x"}
    with pytest.raises(RequestError) as caught:
        sampling_options_from_body(
            {**body, **fields}, endpoint=endpoint, defaults={}, max_model_len=2048
        )
    assert (caught.value.code, caught.value.param) == (code, param)
    assert caught.value.as_error()["type"] == "invalid_request_error"
    assert caught.value.message


def test_a_negative_max_tokens_reads_as_openai_words_it() -> None:
    with pytest.raises(RequestError) as caught:
        chat_options(max_tokens=-1)
    assert caught.value.as_error() == {
        "message": "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, "
        "but got -1 instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "integer_below_min_value",
    }


def test_an_invalid_default_is_reported_under_its_field() -> None:
    with pytest.raises(RequestError) as caught:
        chat_options({"temperature": 9})
    assert caught.value.param == "temperature"


def test_without_a_known_context_max_tokens_is_still_bounded() -> None:
    assert chat_options(max_model_len=None, max_tokens=100_000)["max_tokens"] == 100_000
    with pytest.raises(RequestError):
        chat_options(max_model_len=None, max_tokens=2**40)


def test_it_refuses_an_endpoint_it_cannot_sample_for() -> None:
    with pytest.raises(RequestError) as caught:
        sampling_options_from_body({}, endpoint=EMBEDDINGS, defaults={}, max_model_len=None)
    assert caught.value.param == "url"


# --- Inputs ------------------------------------------------------------------------------------


def test_chat_messages_pass_through_and_developer_becomes_system() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": None},
    ]
    assert chat_messages_from_body({"messages": messages}) == [
        {"role": "system", "content": "Be brief."},
        messages[1],
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize(
    ("messages", "code", "param"),
    [
        (None, "missing_required_parameter", "messages"),
        ("hello", "invalid_type", "messages"),
        ([], "empty_array", "messages"),
        (["hello"], "invalid_type", "messages[0]"),
        ([{"content": "x"}], "missing_required_parameter", "messages[0].role"),
        ([{"role": "tool", "content": "x"}], "invalid_value", "messages[0].role"),
        ([{"role": "user"}], "missing_required_parameter", "messages[0].content"),
        ([{"role": "user", "content": 5}], "invalid_type", "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "unsupported_value",
            "messages[0].content[0]",
        ),
        ([{"role": "user", "content": ["x"]}], "invalid_type", "messages[0].content[0]"),
    ],
)
def test_it_refuses_malformed_messages(messages: Any, code: str, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        chat_messages_from_body({"messages": messages})
    assert (caught.value.code, caught.value.param) == (code, param)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Once", ["Once"]),
        ("", [""]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompts_take_every_openai_shape(prompt: Any, expected: list[Any]) -> None:
    assert completion_prompts_from_body({"prompt": prompt}) == expected


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        (None, "missing_required_parameter"),
        (5, "invalid_type"),
        ([], "empty_array"),
        ([[]], "empty_array"),
        ([[1, -2]], "invalid_value"),
        ([["a"]], "invalid_value"),
        ([{"text": "a"}], "invalid_type"),
        (["a"] * 2049, "array_above_max_length"),
    ],
)
def test_it_refuses_malformed_prompts(prompt: Any, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        completion_prompts_from_body({"prompt": prompt})
    assert caught.value.code == code


def test_embedding_inputs_and_their_options() -> None:
    request = embedding_inputs_from_body(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8}
    )
    assert request.inputs == ["a", "b"]
    assert request.encoding_format == "base64"
    assert request.dimensions == 8
    assert embedding_inputs_from_body({"input": [5, 6]}).inputs == [[5, 6]]
    assert embedding_inputs_from_body({"input": "a"}).encoding_format == "float"


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({}, "missing_required_parameter", "input"),
        ({"input": ""}, "invalid_value", "input"),
        ({"input": ["a", ""]}, "invalid_value", "input[1]"),
        ({"input": {"a": 1}}, "invalid_type", "input"),
        ({"input": ["a"] * 2049}, "array_above_max_length", "input"),
        ({"input": "a", "encoding_format": "int8"}, "invalid_value", "encoding_format"),
        ({"input": "a", "dimensions": 0}, "integer_below_min_value", "dimensions"),
        ({"input": "a", "temperature": 1}, "unknown_parameter", "temperature"),
    ],
)
def test_it_refuses_malformed_embedding_requests(
    fields: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(RequestError) as caught:
        embedding_inputs_from_body(fields)
    assert (caught.value.code, caught.value.param) == (code, param)


# --- Any body ----------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "response_format",
        "logit_bias",
        "ignore_eos",
        "top_k",
        "min_p",
        "repetition_penalty",
        "tools",
        "best_of",
        "echo",
        "suffix",
        "stream",
        "messages",
        "prompt",
        "input",
        "encoding_format",
        "dimensions",
        "user",
    ]
)
# Mostly known fields with plausible values, so bodies get past the first check often.
_plausible = (
    st.integers(min_value=-3, max_value=40)
    | st.floats(min_value=-3, max_value=3)
    | st.lists(st.text(max_size=3), max_size=5)
    | st.sampled_from(
        [
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
            {"5": 1.5},
            [{"role": "user", "content": "hi"}],
        ]
    )
)
_bodies = st.dictionaries(
    _fields | _fields | _fields | st.text(max_size=6), _plausible | _json_values, max_size=6
)
_defaults = st.dictionaries(_fields, _plausible | _json_values, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, defaults=_defaults, endpoint=st.sampled_from([CHAT, COMPLETIONS]))
def test_any_body_either_maps_or_raises_a_request_error(
    body: dict[str, Any], defaults: dict[str, Any], endpoint: str
) -> None:
    with contextlib.suppress(RequestError):
        sampling_params_from_body(body, endpoint=endpoint, defaults=defaults, max_model_len=512)
    with contextlib.suppress(RequestError):
        if endpoint == CHAT:
            chat_messages_from_body(body)
        else:
            completion_prompts_from_body(body)


@settings(max_examples=200, deadline=None)
@given(body=_bodies)
def test_any_embeddings_body_either_maps_or_raises_a_request_error(body: dict[str, Any]) -> None:
    with contextlib.suppress(RequestError):
        embedding_inputs_from_body(body)
