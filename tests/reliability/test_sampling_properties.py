"""Properties of the request -> SamplingParams mapping (inference.sampling).

- Any body at all maps or raises RequestError (in OpenAI's shape), never anything else.
- A body within OpenAI's documented ranges maps, and keeps what it asked for.
- The registered model's defaults fill only the fields a body leaves out.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inference import sampling

MAX_EXAMPLES = int(os.environ.get("PROPERTY_MAX_EXAMPLES", "300"))
PROPERTY_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Building vllm.SamplingParams costs more per example than the checks before it.
VLLM_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=max(MAX_EXAMPLES // 3, 30))

FIELDS = sorted(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "stream",
        "ignore_eos",
        "messages",
        "prompt",
        "best_of",
        "echo",
        "suffix",
        "tools",
        "tool_choice",
        "metadata",
        "model",
        "unknown_field",
    }
)
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
hostile_bodies = st.dictionaries(st.sampled_from(FIELDS), anything, max_size=8)
endpoints = st.sampled_from([sampling.CHAT, sampling.COMPLETIONS])
max_model_lens = st.none() | st.integers(min_value=1, max_value=1 << 20)


def check_refusal(error: sampling.RequestError) -> None:
    body = error.as_error()
    assert body["type"] == "invalid_request_error"
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["param"] is None or isinstance(body["param"], str)


@PROPERTY_SETTINGS
@given(body=hostile_bodies, endpoint=endpoints, max_model_len=max_model_lens)
@example(body={"max_tokens": float("inf")}, endpoint=sampling.CHAT, max_model_len=512)
@example(body={"seed": 2**64}, endpoint=sampling.CHAT, max_model_len=None)
@example(body={"logit_bias": {"1" * 400: 1}}, endpoint=sampling.CHAT, max_model_len=None)
@example(body={"temperature": float("nan")}, endpoint=sampling.COMPLETIONS, max_model_len=None)
def test_any_body_maps_or_is_refused_with_an_openai_error(
    body: dict[str, Any], endpoint: str, max_model_len: int | None
) -> None:
    try:
        options = sampling.sampling_options_from_body(
            body, endpoint=endpoint, defaults={}, max_model_len=max_model_len
        )
    except sampling.RequestError as error:
        check_refusal(error)
        return
    assert options["max_tokens"] is None or options["max_tokens"] >= 1
    assert 1 <= options["n"] <= sampling.MAX_N


@PROPERTY_SETTINGS
@given(messages=anything)
def test_any_messages_value_maps_or_is_refused(messages: Any) -> None:
    try:
        conversation = sampling.chat_messages_from_body({"messages": messages})
    except sampling.RequestError as error:
        check_refusal(error)
        return
    assert conversation and all(m["role"] in ("system", "user", "assistant") for m in conversation)


@VLLM_SETTINGS
@given(body=hostile_bodies, endpoint=endpoints)
def test_any_body_builds_sampling_params_or_is_refused(body: dict[str, Any], endpoint: str) -> None:
    try:
        params = sampling.sampling_params_from_body(
            body, endpoint=endpoint, defaults={}, max_model_len=512
        )
    except sampling.RequestError as error:
        check_refusal(error)
        return
    assert params.n >= 1


valid_bodies = st.fixed_dictionaries(
    {"messages": st.just([{"role": "user", "content": "hi"}])},
    optional={
        "max_tokens": st.integers(1, 512),
        "temperature": st.floats(0.01, 2),
        "top_p": st.floats(0.01, 1),
        "n": st.integers(1, sampling.MAX_N),
        "seed": st.integers(sampling.SEED_MIN, sampling.SEED_MAX),
        "stop": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "logit_bias": st.dictionaries(
            st.integers(0, 511).map(str), st.floats(-100, 100), max_size=5
        ),
        "logprobs": st.just(True),
        "top_logprobs": st.integers(0, sampling.MAX_TOP_LOGPROBS),
    },
).map(
    # OpenAI takes top_logprobs only together with logprobs: true.
    lambda body: {**body, "logprobs": True} if "top_logprobs" in body else body
)


@VLLM_SETTINGS
@given(body=valid_bodies)
def test_a_body_within_openais_ranges_maps_and_keeps_what_it_asked_for(
    body: dict[str, Any],
) -> None:
    params = sampling.sampling_params_from_body(
        body, endpoint=sampling.CHAT, defaults={}, max_model_len=512
    )

    assert params.max_tokens == body.get("max_tokens")
    assert params.n == body.get("n", 1)
    assert params.seed == body.get("seed")
    assert (params.stop or None) == body.get("stop")
    if "temperature" in body:
        assert params.temperature == body["temperature"]
    if "logprobs" in body:
        assert params.logprobs == (body.get("top_logprobs") or 0)
    for key in ("presence_penalty", "frequency_penalty"):
        if key in body:
            assert getattr(params, key) == body[key]


defaults_strategy = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0.1, 1.5),
        "seed": st.integers(0, 1000),
        "stop": st.just(["\n"]),
    },
)


@PROPERTY_SETTINGS
@given(body=valid_bodies, defaults=defaults_strategy)
def test_defaults_fill_only_what_the_body_leaves_out(
    body: dict[str, Any], defaults: dict[str, Any]
) -> None:
    options = sampling.sampling_options_from_body(
        body, endpoint=sampling.CHAT, defaults=defaults, max_model_len=512
    )
    for key in ("max_tokens", "seed", "stop"):
        wanted = body.get(key, defaults.get(key))
        assert options.get(key) == wanted, key
    if "temperature" in body or "temperature" in defaults:
        temperature = body.get("temperature", defaults.get("temperature"))
        assert options["temperature"] == temperature
