"""One batch request body to the inputs and sampling parameters vLLM needs, checked as OpenAI does.

Everything here is pure: no engine, no database. A body either maps or raises RequestError with
OpenAI's message, param and code, which the engine turns into that request's error line. vLLM is
imported only when SamplingParams is built, so the checks also run where vLLM is not loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from batches.validation import json_type_name

if TYPE_CHECKING:
    from vllm import SamplingParams

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

MAX_N = 16
MAX_STOP_SEQUENCES = 4
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_PROMPTS = 2048
MAX_EMBEDDING_INPUTS = 2048
# Seeds reach torch.Generator.manual_seed and the engine's msgpack transport: 64-bit signed.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
# Without a known context length, an upper bound that no engine field overflows on.
MAX_TOKENS_CAP = 2**31 - 1

# Fields a registered model's default_sampling may set for requests that omit them.
DEFAULTABLE = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "stop",
        "seed",
        "ignore_eos",
    }
)
# Accepted and without effect on a self-hosted engine (bookkeeping for OpenAI's own service).
_IGNORED = frozenset(
    {
        "model",
        "metadata",
        "store",
        "user",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "parallel_tool_calls",
        "stream_options",
    }
)
_SAMPLING = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "max_tokens",
        "n",
        "response_format",
        "seed",
        "stop",
        "stream",
        "temperature",
        "top_p",
        # vLLM's extensions to the OpenAI parameters.
        "ignore_eos",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)
# Chat features this server does not implement; null (or an equivalent no-op) is accepted.
_CHAT_UNSUPPORTED = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "audio",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "modalities",
    }
)
_FIELDS = {
    CHAT: _IGNORED
    | _SAMPLING
    | _CHAT_UNSUPPORTED
    | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"},
    COMPLETIONS: _IGNORED | _SAMPLING | {"prompt", "logprobs", "best_of", "echo", "suffix"},
    EMBEDDINGS: frozenset({"model", "user", "input", "encoding_format", "dimensions"}),
}
_CHAT_ROLES = ("system", "developer", "user", "assistant")


class RequestError(Exception):
    """A request OpenAI would answer with a 400 invalid_request_error."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def as_error(self) -> dict[str, Any]:
        """The body's "error" object, in OpenAI's shape."""
        return {
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": self.code,
        }


@dataclass(frozen=True, slots=True)
class EmbeddingInputs:
    """What the embed path needs from one embeddings request."""

    inputs: list[str | list[int]]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None


# --- Typed reads with OpenAI's wording ------------------------------------------------------------


def _type_error(param: str, expected: str, value: Any) -> RequestError:
    return RequestError(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} "
        "instead.",
        param,
    )


def _enum_error(param: str, value: Any, allowed: tuple[str, ...]) -> RequestError:
    quoted = [f"'{item}'" for item in allowed]
    listed = ", ".join(quoted[:-1]) + (", and " if len(quoted) > 2 else " and ") + quoted[-1]
    shown = f"'{value}'" if isinstance(value, str) else json_type_name(value)
    return RequestError(
        "invalid_value", f"Invalid value: {shown}. Supported values are: {listed}.", param
    )


def _unsupported(param: str) -> RequestError:
    return RequestError(
        "unsupported_parameter",
        f"Unsupported parameter: '{param}' is not supported with this model.",
        param,
    )


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(
    param: str,
    value: float,
    kind: str,
    low: float | None,
    high: float | None,
    *,
    low_exclusive: bool = False,
) -> None:
    if low is not None and (value <= low if low_exclusive else value < low):
        sign = ">" if low_exclusive else ">="
        raise RequestError(
            f"{kind}_below_min_value",
            f"Invalid '{param}': {kind} below minimum value. Expected a value {sign} {low}, but "
            f"got {value} instead.",
            param,
        )
    if high is not None and value > high:
        raise RequestError(
            f"{kind}_above_max_value",
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= {high}, but got "
            f"{value} instead.",
            param,
        )


def _integer(
    param: str, value: Any, *, low: int | None = None, high: int | None = None
) -> int | None:
    if value is None:
        return None
    if not _is_integer(value):
        raise _type_error(param, "an integer", value)
    _bounded(param, value, "integer", low, high)
    return int(value)


def _decimal(
    param: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_exclusive: bool = False,
) -> float | None:
    if value is None:
        return None
    if not _is_number(value):
        raise _type_error(param, "a number", value)
    if not math.isfinite(value):
        raise RequestError(
            "invalid_value", f"Invalid '{param}': expected a finite number, got {value}.", param
        )
    _bounded(param, value, "decimal", low, high, low_exclusive=low_exclusive)
    return float(value)


def _boolean(param: str, value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _type_error(param, "a boolean", value)
    return value


def _check_fields(body: dict[str, Any], endpoint: str) -> None:
    allowed = _FIELDS[endpoint]
    for key in body:
        if key not in allowed:
            raise RequestError(
                "unknown_parameter", f"Unrecognized request argument supplied: {key}", key
            )


def _check_chat_unsupported(body: dict[str, Any]) -> None:
    for key in _CHAT_UNSUPPORTED:
        value = body.get(key)
        if value is None:
            continue
        if key == "tool_choice" and value == "none":
            continue
        if key == "modalities" and value == ["text"]:
            continue
        raise _unsupported(key)


# --- Sampling parameters --------------------------------------------------------------------------


def _stop(value: Any, param: str) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise _type_error(param, "a string or an array of strings", value)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise RequestError(
            "array_above_max_length",
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{MAX_STOP_SEQUENCES}, but got an array with length {len(stops)} instead.",
            param,
        )
    for index, stop in enumerate(stops):
        item = param if isinstance(value, str) else f"{param}[{index}]"
        if not isinstance(stop, str):
            raise _type_error(item, "a string", stop)
        if not stop:
            raise RequestError(
                "string_below_min_length",
                f"Invalid '{item}': string too short. Expected a string with minimum length 1, "
                "but got an empty string instead.",
                item,
            )
    return stops or None


def _logit_bias(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("logit_bias", "an object", value)
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise RequestError(
            "invalid_value",
            f"Invalid 'logit_bias': too many entries. Expected at most {MAX_LOGIT_BIAS_ENTRIES} "
            f"token ids, but got {len(value)} instead.",
            "logit_bias",
        )
    bias: dict[int, float] = {}
    for key, amount in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise RequestError(
                "invalid_value",
                f"Invalid 'logit_bias': keys must be token ids written as integers, got '{key}'.",
                "logit_bias",
            )
        checked = _decimal(f"logit_bias.{key}", amount, low=-100, high=100)
        if checked is None:
            raise _type_error(f"logit_bias.{key}", "a number", amount)
        bias[int(key)] = checked
    return bias or None


def _structured_outputs(value: Any) -> dict[str, Any] | None:
    """response_format as keyword arguments for vLLM's StructuredOutputsParams, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("response_format", "an object", value)
    kind = value.get("type")
    if kind is None:
        raise RequestError(
            "missing_required_parameter",
            "Missing required parameter: 'response_format.type'.",
            "response_format.type",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind != "json_schema":
        raise _enum_error("response_format.type", kind, ("text", "json_object", "json_schema"))
    spec = value.get("json_schema")
    if spec is None:
        raise RequestError(
            "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
        )
    if not isinstance(spec, dict):
        raise _type_error("response_format.json_schema", "an object", spec)
    name = spec.get("name")
    if name is None:
        raise RequestError(
            "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
        )
    if not isinstance(name, str):
        raise _type_error("response_format.json_schema.name", "a string", name)
    schema = spec.get("schema")
    if schema is None:
        raise RequestError(
            "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema.schema'.",
            "response_format.json_schema.schema",
        )
    if not isinstance(schema, dict):
        raise _type_error("response_format.json_schema.schema", "an object", schema)
    return {"json": schema}


def _max_tokens(
    body: dict[str, Any], defaults: dict[str, Any], keys: tuple[str, str]
) -> tuple[str, Any]:
    """The output length limit and the field it came from: the body's first, then the default."""
    for source in (body, defaults):
        for key in keys:
            if source.get(key) is not None:
                return key, source[key]
    return keys[0], None


def sampling_options_from_body(
    body: dict[str, Any],
    *,
    endpoint: str,
    defaults: dict[str, Any],
    max_model_len: int | None,
) -> dict[str, Any]:
    """Check a chat or completions body; return keyword arguments for vllm.SamplingParams.

    Fields the body omits (or sets to null) take the registered model's defaults. Structured
    output constraints come back under "structured_outputs" as a plain dict.
    """
    if endpoint not in (CHAT, COMPLETIONS):
        raise RequestError(
            "invalid_value", f"Invalid value: '{endpoint}'. Expected a text endpoint.", "url"
        )
    _check_fields(body, endpoint)
    if body.get("stream") not in (None, False):
        raise RequestError(
            "invalid_value", "Streaming is not supported in the Batch API.", "stream"
        )

    def pick(key: str) -> Any:
        value = body.get(key)
        if value is None and key in DEFAULTABLE:
            value = defaults.get(key)
        return value

    options: dict[str, Any] = {}
    if endpoint == CHAT:
        _check_chat_unsupported(body)
        param, raw_max = _max_tokens(body, defaults, ("max_completion_tokens", "max_tokens"))
        logprobs = _boolean("logprobs", body.get("logprobs"))
        top_logprobs = _integer(
            "top_logprobs", body.get("top_logprobs"), low=0, high=MAX_TOP_LOGPROBS
        )
        if top_logprobs is not None and not logprobs:
            raise RequestError(
                "invalid_value",
                "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                "'top_logprobs' is used.",
                "top_logprobs",
            )
        if logprobs:
            options["logprobs"] = top_logprobs or 0
    else:
        param, raw_max = _max_tokens(body, defaults, ("max_tokens", "max_completion_tokens"))
        if raw_max is None:
            raw_max = 16  # OpenAI's default for the completions endpoint
        logprobs_count = _integer(
            "logprobs", body.get("logprobs"), low=0, high=MAX_COMPLETION_LOGPROBS
        )
        if logprobs_count is not None:
            options["logprobs"] = logprobs_count
        if _boolean("echo", body.get("echo")):
            raise _unsupported("echo")
        if body.get("suffix") is not None:
            raise _unsupported("suffix")

    ceiling = max_model_len if max_model_len is not None else MAX_TOKENS_CAP
    max_tokens = _integer(param, raw_max, low=1)
    if max_tokens is not None and max_tokens > ceiling:
        raise RequestError(
            "invalid_value",
            f"{param} is too large: {max_tokens}. This model supports at most {ceiling} "
            f"completion tokens, whereas you provided {max_tokens}.",
            param,
        )
    options["max_tokens"] = max_tokens

    n = _integer("n", body.get("n"), low=1, high=MAX_N) or 1
    if endpoint == COMPLETIONS:
        best_of = _integer("best_of", body.get("best_of"), low=1, high=MAX_N)
        if best_of is not None and best_of != n:
            raise RequestError(
                "unsupported_value",
                "Unsupported value: 'best_of' must equal 'n' (or be omitted) on this server.",
                "best_of",
            )
    temperature = _decimal("temperature", pick("temperature"), low=0, high=2)
    top_p = _decimal("top_p", pick("top_p"), low=0, high=1)
    top_k = _integer("top_k", pick("top_k"), low=-1, high=MAX_TOKENS_CAP)
    options["n"] = n
    if temperature == 0 and n > 1:
        # vLLM refuses n > 1 when greedy; top_k=1 is greedy sampling that allows it.
        temperature, top_k = 1.0, 1
    if temperature is not None:
        options["temperature"] = temperature
    if top_p is not None:
        # OpenAI accepts 0 (keep only the most likely token); vLLM wants a positive mass.
        options["top_p"] = top_p if top_p > 0 else 1e-9
    if top_k is not None:
        options["top_k"] = top_k
    for key in ("presence_penalty", "frequency_penalty"):
        value = _decimal(key, pick(key), low=-2, high=2)
        if value is not None:
            options[key] = value
    min_p = _decimal("min_p", pick("min_p"), low=0, high=1)
    if min_p is not None:
        options["min_p"] = min_p
    repetition_penalty = _decimal(
        "repetition_penalty", pick("repetition_penalty"), low=0, high=2, low_exclusive=True
    )
    if repetition_penalty is not None:
        options["repetition_penalty"] = repetition_penalty
    seed = _integer("seed", pick("seed"), low=SEED_MIN, high=SEED_MAX)
    if seed is not None:
        options["seed"] = seed
    stop = _stop(pick("stop"), "stop")
    if stop is not None:
        options["stop"] = stop
    ignore_eos = _boolean("ignore_eos", pick("ignore_eos"))
    if ignore_eos is not None:
        options["ignore_eos"] = ignore_eos
    logit_bias = _logit_bias(body.get("logit_bias"))
    if logit_bias is not None:
        options["logit_bias"] = logit_bias
    structured = _structured_outputs(body.get("response_format"))
    if structured is not None:
        options["structured_outputs"] = structured
    return options


def sampling_params_from_body(
    body: dict[str, Any],
    *,
    endpoint: str,
    defaults: dict[str, Any],
    max_model_len: int | None,
) -> SamplingParams:
    """The vllm.SamplingParams for one chat or completions request body."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    options = sampling_options_from_body(
        body, endpoint=endpoint, defaults=defaults, max_model_len=max_model_len
    )
    try:
        structured = options.pop("structured_outputs", None)
        if structured is not None:
            options["structured_outputs"] = StructuredOutputsParams(**structured)
        # Each request gets its own params object, so vLLM need not deep-copy it per request.
        return SamplingParams(**options, skip_clone=True)
    except (VLLMValidationError, ValueError) as error:
        # vLLM's own checks grow between versions: whatever they add still fails one request.
        param = getattr(error, "parameter", None)
        raise RequestError("invalid_value", str(error), param) from None


# --- Inputs -----------------------------------------------------------------------------------


def chat_messages_from_body(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation to render with the model's chat template."""
    messages = body.get("messages")
    if messages is None:
        raise RequestError(
            "missing_required_parameter", "Missing required parameter: 'messages'.", "messages"
        )
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise RequestError(
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
        )
    conversation: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise RequestError(
                "missing_required_parameter",
                f"Missing required parameter: '{where}.role'.",
                f"{where}.role",
            )
        if role not in _CHAT_ROLES:
            raise _enum_error(f"{where}.role", role, _CHAT_ROLES)
        content = message.get("content")
        if content is None and role != "assistant":
            raise RequestError(
                "missing_required_parameter",
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
            )
        if content is not None and not isinstance(content, str | list):
            raise _type_error(f"{where}.content", "a string or an array", content)
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                part_where = f"{where}.content[{part_index}]"
                if not isinstance(part, dict):
                    raise _type_error(part_where, "an object", part)
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise RequestError(
                        "unsupported_value",
                        f"Unsupported value: '{part_where}' must be a text part "
                        '({"type": "text", "text": ...}); this model reads text only.',
                        part_where,
                    )
        if role == "developer" or content is None:
            # Most chat templates know no "developer" role: it is OpenAI's new name for system.
            message = {
                **message,
                "role": "system" if role == "developer" else role,
                "content": "" if content is None else content,
            }
        conversation.append(message)
    return conversation


def _token_ids(param: str, value: list[Any]) -> list[int]:
    for index, token in enumerate(value):
        if not _is_integer(token) or token < 0:
            raise RequestError(
                "invalid_value",
                f"Invalid '{param}[{index}]': token ids must be non-negative integers.",
                f"{param}[{index}]",
            )
    return value


def _text_or_tokens_list(
    value: Any, param: str, *, limit: int, allow_empty_text: bool
) -> list[str | list[int]]:
    """A string, an array of strings, an array of token ids, or an array of such arrays."""
    if value is None:
        raise RequestError(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_integer(token) for token in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise _type_error(param, "a string or an array", value)
    if not items:
        raise RequestError(
            "empty_array",
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            param,
        )
    if len(items) > limit:
        raise RequestError(
            "array_above_max_length",
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(items)} instead.",
            param,
        )
    result: list[str | list[int]] = []
    for index, item in enumerate(items):
        where = param if len(items) == 1 and item is value else f"{param}[{index}]"
        if isinstance(item, str):
            if not item and not allow_empty_text:
                raise RequestError(
                    "invalid_value",
                    f"Invalid '{where}': expected a non-empty string.",
                    where,
                )
            result.append(item)
        elif isinstance(item, list):
            if not item:
                raise RequestError(
                    "empty_array",
                    f"Invalid '{where}': empty array. Expected at least one token id.",
                    where,
                )
            result.append(_token_ids(where, item))
        else:
            raise _type_error(where, "a string or an array of token ids", item)
    return result


def completion_prompts_from_body(body: dict[str, Any]) -> list[str | list[int]]:
    """The prompts of a completions request: text or token ids, one or several."""
    return _text_or_tokens_list(
        body.get("prompt"), "prompt", limit=MAX_PROMPTS, allow_empty_text=True
    )


def embedding_inputs_from_body(body: dict[str, Any]) -> EmbeddingInputs:
    """Check an embeddings body; return its inputs and output options."""
    _check_fields(body, EMBEDDINGS)
    inputs = _text_or_tokens_list(
        body.get("input"), "input", limit=MAX_EMBEDDING_INPUTS, allow_empty_text=False
    )
    encoding_format = body.get("encoding_format")
    if encoding_format not in (None, "float", "base64"):
        raise _enum_error("encoding_format", encoding_format, ("float", "base64"))
    dimensions = _integer("dimensions", body.get("dimensions"), low=1, high=MAX_TOKENS_CAP)
    return EmbeddingInputs(
        inputs=inputs,
        encoding_format="base64" if encoding_format == "base64" else "float",
        dimensions=dimensions,
    )
