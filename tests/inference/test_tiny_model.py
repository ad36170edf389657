"""The tiny random-weight model: built locally, deterministic, small, shaped for vLLM's CPU kernels.

That vLLM loads it and generates with it is shown by tests/inference/test_engine.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from inference.tiny_model import (
    CHAT_TEMPLATE,
    TINY_MODEL_VERSION,
    build_tiny_model,
    tiny_model_ensure,
)

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_it_writes_every_file_vllm_loads(built: Path) -> None:
    assert {path.name for path in built.iterdir()} == FILES


def test_the_same_seed_gives_byte_identical_files(built: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)

    assert contents(again) == contents(built)


def test_another_seed_changes_the_weights_only(built: Path, tmp_path: Path) -> None:
    other = contents(build_tiny_model(tmp_path / "other", seed=1))
    mine = contents(built)

    assert other["model.safetensors"] != mine["model.safetensors"]
    assert {name: data for name, data in other.items() if name != "model.safetensors"} == {
        name: data for name, data in mine.items() if name != "model.safetensors"
    }


def test_it_is_a_two_layer_llama_with_64_wide_heads(built: Path) -> None:
    config = json.loads((built / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 2
    assert config["hidden_size"] == 128
    assert config["num_attention_heads"] == 2
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["vocab_size"] == 512
    assert config["max_position_embeddings"] == 2048


def test_the_weights_match_the_config(built: Path) -> None:
    from safetensors import safe_open

    config = json.loads((built / "config.json").read_text())
    with safe_open(str(built / "model.safetensors"), framework="pt") as weights:
        embeddings = weights.get_tensor("model.embed_tokens.weight")
        names = set(weights.keys())

    assert tuple(embeddings.shape) == (config["vocab_size"], config["hidden_size"])
    assert "model.layers.1.mlp.down_proj.weight" in names
    assert not any(name.startswith("model.layers.2.") for name in names)


def test_it_stays_under_a_megabyte(built: Path) -> None:
    assert sum(path.stat().st_size for path in built.iterdir()) < 1_000_000


def test_the_tokenizer_is_byte_level_with_512_tokens_and_special_tokens(built: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(built))

    assert len(tokenizer) == 512
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    text = "Any text, even ünïcödé and emoji 🦙, round-trips through bytes."
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert max(ids) < 512


def test_the_chat_template_tags_roles_and_ends_with_the_assistant_prompt(built: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(built))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert prompt == "<|bos|><|system|>\nBe brief.<|eos|>\n<|user|>\nHi<|eos|>\n<|assistant|>\n"
    config = json.loads((built / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE


def test_ensure_builds_once_and_then_reuses_the_copy(tmp_path: Path) -> None:
    target = tmp_path / "models" / f"tiny-{TINY_MODEL_VERSION}"

    assert tiny_model_ensure(target) == target
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_ensure(target) == target

    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert [path.name for path in (tmp_path / "models").iterdir()] == [target.name]


def test_the_command_builds_the_model_and_says_it_is_gibberish(tmp_path: Path) -> None:
    from io import StringIO

    out = StringIO()
    call_command("build_tiny_model", str(tmp_path / "cmd"), "--seed", "3", stdout=out)

    assert {path.name for path in (tmp_path / "cmd").iterdir()} == FILES
    assert "gibberish" in out.getvalue()
