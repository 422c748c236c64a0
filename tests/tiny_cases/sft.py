"""Tiny sft case: a random 2-layer Llama with a word-level ChatML tokenizer and alpaca rows.

``build_spec(tmp_path, method="lora", rows=None) -> RunSpec`` writes the base and the data under
``tmp_path``; the spec trains two steps. ``chat_tokenizer()`` and ``save_base()`` are reused by
tests/unit/train/test_sft.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASK = "sft"
METHODS = ("full", "lora", "qlora")

WORDS = [
    "what",
    "is",
    "the",
    "capital",
    "of",
    "france",
    "paris",
    "germany",
    "berlin",
    "spain",
    "madrid",
    "italy",
    "rome",
    "answer",
    "question",
    "name",
    "a",
    "colour",
    "red",
    "blue",
    "green",
    "give",
    "me",
    "one",
    "two",
    "three",
    "number",
    "word",
    "yes",
    "no",
    "please",
    "translate",
    "to",
    "french",
    "hello",
    "bonjour",
    "thanks",
    "merci",
    "list",
    "count",
    "write",
    "say",
]
SPECIALS = ["<pad>", "<|im_end|>", "<unk>", "<|im_start|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_tokenizer() -> Any:
    """Word-level fast tokenizer: pad=0, eos=<|im_end|>=1, unk=2, <|im_start|>=3, ChatML."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, "system", "user", "assistant", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def save_base(folder: Path, hidden: int = 64) -> Path:
    """A random 2-layer Llama causal LM (safetensors) + the chat tokenizer in ``folder``.

    hidden 64: bitsandbytes quantizes in blocks of 64 values, so every weight splits evenly.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = chat_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
        tie_word_embeddings=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def alpaca_rows(n: int = 30) -> list[dict]:
    pairs = [
        ("what is the capital of france", "paris"),
        ("what is the capital of germany", "berlin"),
        ("what is the capital of spain", "madrid"),
        ("what is the capital of italy", "rome"),
        ("name a colour", "red"),
        ("translate to french", "bonjour"),
    ]
    rows = []
    for i in range(n):
        question, answer = pairs[i % len(pairs)]
        extra = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(i % 4))
        rows.append({"instruction": f"{question} {i}", "input": extra, "output": f"{answer} {i}"})
    return rows


def write_json(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def spec_dict(base: Path, data: Path, method: str, out: Path) -> dict:
    return {
        "name": f"tiny-sft-{method}",
        "task": TASK,
        "output_dir": str(out),
        "model": {"base": str(base), "max_length": 64},
        "data": {"source": str(data), "split": {"test_size": 0.2, "validation_size": 0.2}},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "training": {
            "max_steps": 2,
            "batch_size": 4,
            "eval_batch_size": 4,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "early_stopping_patience": None,
            "warmup_fraction": 0.0,
            "num_threads": 1,
        },
    }


def build_spec(tmp_path: Path, method: str = "lora", rows: list[dict] | None = None) -> Any:
    from honed.spec import parse_spec

    base = tmp_path / "base-llama"
    if not (base / "config.json").is_file():
        save_base(base)
    data = write_json(tmp_path / "chat.json", rows or alpaca_rows())
    return parse_spec(spec_dict(base, data, method, tmp_path / "run"))
