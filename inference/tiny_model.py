"""A tiny Llama model with random weights that vLLM loads in seconds, built without network.

Tests, CI and the demo run the real vLLM path with it. Its weights are random, so its text is
gibberish: it exercises the engine, never the quality of an answer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Bump when the files written change, so cached copies (the test fixture's) are rebuilt.
TINY_MODEL_VERSION = 1

VOCAB_SIZE = 512
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
# head_dim = 128 / 2 = 64: vLLM's CPU attention kernels reject smaller heads such as 16.
NUM_HEADS = 2
MAX_POSITION_EMBEDDINGS = 2048
# bfloat16 keeps the file under 1 MB. On CPUs without AVX-512 BF16 the engine upcasts to float32
# (see inference.engine), which runs there about twice as fast.
DTYPE = "bfloat16"

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Each message is "<|role|>\n" + content + eos; the prompt ends with the assistant's header.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Enough varied English (and a little JSON and code) for 250 byte-pair merges.
CORPUS = (
    "The batch server reads a file of requests, runs every one of them on a language model, "
    "and writes the answers to an output file. Each line of the input is a JSON object with a "
    "custom id, a method, a url and a body. The body holds the model name, the messages and "
    "the sampling parameters: temperature, top p, the maximum number of tokens, stop strings "
    "and a seed.",
    "Once upon a time there was a small model that knew only five hundred and twelve tokens. "
    "It could not write a sonnet or answer a question, but it could count its words, stop when "
    "it was told to, and finish every request it was given. The people who tested the server "
    "were grateful for its speed and forgave it for speaking nonsense.",
    "A worker claims a batch with a lease, renews the lease while it works, and records each "
    "finished chunk before it starts the next one. When a worker dies, another one waits for "
    "the lease to expire, then resumes the batch where the last chunk ended. No request is "
    "lost and none is written twice.",
    'Example output: {"id": "batch_req_123", "custom_id": "request-1", "response": '
    '{"status_code": 200, "body": {"object": "chat.completion", "choices": [{"index": 0, '
    '"message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}], '
    '"usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}}, '
    '"error": null}',
    "def add(a, b):\n    return a + b\n\nfor number in range(10):\n    print(add(number, 1))\n",
    "Reviewers read the answers, mark the good ones with a gold star, correct the bad ones and "
    "export the result as training data. Questions may ask for a rating from one to five, a "
    "choice among labels, or a short free-text comment.",
)


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Plain prompts (the completions endpoint) start with BOS like chat prompts do; the chat
    # path renders with add_special_tokens=False, so it is not doubled there.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, bos_id)],
    )
    return tokenizer


def _random_weights(seed: int, dtype: str) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)

    def normal(*shape: int) -> Any:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch_dtype)

    def ones(size: int) -> Any:
        return torch.ones(size, dtype=torch_dtype)

    weights: dict[str, Any] = {"model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN_SIZE)}
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weights[f"{prefix}.self_attn.{name}.weight"] = normal(HIDDEN_SIZE, HIDDEN_SIZE)
        weights[f"{prefix}.mlp.gate_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        weights[f"{prefix}.mlp.up_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        weights[f"{prefix}.mlp.down_proj.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
        weights[f"{prefix}.input_layernorm.weight"] = ones(HIDDEN_SIZE)
        weights[f"{prefix}.post_attention_layernorm.weight"] = ones(HIDDEN_SIZE)
    weights["model.norm.weight"] = ones(HIDDEN_SIZE)
    return weights


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write a vLLM-loadable Llama model with random weights into directory; return it.

    The same seed gives byte-identical files. The tokenizer does not depend on the seed.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    bos_id = tokenizer.token_to_id(BOS)
    eos_id = tokenizer.token_to_id(EOS)
    pad_id = tokenizer.token_to_id(PAD)

    _write_json(
        directory / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": HIDDEN_SIZE,
            "intermediate_size": INTERMEDIATE_SIZE,
            "num_hidden_layers": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "num_key_value_heads": NUM_HEADS,
            "head_dim": HIDDEN_SIZE // NUM_HEADS,
            "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "attention_bias": False,
            "mlp_bias": False,
            # Tied embeddings keep the file small: the output layer reuses the input table.
            "tie_word_embeddings": True,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
            "torch_dtype": DTYPE,
            "initializer_range": 0.02,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id},
    )
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": list(ROLE_TOKENS),
            "model_max_length": MAX_POSITION_EMBEDDINGS,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
    )
    weights = directory / "model.safetensors"
    save_file(_random_weights(seed, DTYPE), str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; a worker running as another user reads it
    return directory


def tiny_model_ensure(directory: Path, *, seed: int = 0) -> Path:
    """Return directory holding the tiny model, building it first when it is not there yet.

    The model is built next to directory and renamed into place, so a directory that exists is
    complete, and two processes that race end up sharing one copy.
    """
    if (directory / "model.safetensors").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from workers running as others
    try:
        build_tiny_model(staging, seed=seed)
        try:
            os.rename(staging, directory)
        except OSError:
            if not (directory / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
