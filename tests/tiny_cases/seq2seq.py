"""Tiny seq2seq case: a random T5 (or Llama) base with an in-process word-level tokenizer and
a handful of source/summary rows. Also home of the tiny-model helpers the dpo and reward cases
reuse (they load this file by path, so no package import is needed).

``build_spec(tmp_path, method="lora", arch="t5") -> RunSpec`` writes the base model and the data
under ``tmp_path`` and returns a spec that trains two steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASK = "seq2seq"
METHODS = ("full", "lora", "qlora")

WORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "the a bill act amends requires secretary state federal program funds report congress "
    "agency health water tax credit education energy section law shall may year years "
    "establish authorize grant grants for of to and in on by with is are this that it "
    "summarize summary human assistant yes no sorry help harmful kind rude you i please"
).split()
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer (~70 words + specials): pad=0, eos=1, unk=2, bos=3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def tiny_t5(vocab_size: int) -> Any:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        feed_forward_proj="relu",
    )
    return T5ForConditionalGeneration(cfg)


def tiny_llama(vocab_size: int, head: str = "causal") -> Any:
    """A 2-layer Llama; head 'causal' (LM) or 'reward' (1-output sequence classifier)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,  # bitsandbytes quantizes in blocks of 64 (qlora)
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
        tie_word_embeddings=False,
    )
    if head == "reward":
        cfg.num_labels = 1
        return LlamaForSequenceClassification(cfg)
    return LlamaForCausalLM(cfg)


def save_base(folder: Path, arch: str) -> Path:
    """Write a tiny random base (safetensors) + tokenizer into ``folder``."""
    import torch

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = tiny_t5(len(tokenizer)) if arch == "t5" else tiny_llama(len(tokenizer))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def summary_rows(n: int = 24) -> list[dict]:
    topics = ["water", "tax", "health", "education", "energy", "grant"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        text = (
            f"section {i % 5} the act amends the {topic} law and requires the secretary "
            f"to report to congress each year on the {topic} program " * (1 + i % 3)
        )
        rows.append({"id": i, "text": text.strip(), "summary": f"amends the {topic} law year {i}"})
    return rows


def spec_dict(base: Path, data: Path, method: str, task: str, out: Path) -> dict:
    """A spec that trains two steps with small batches."""
    return {
        "name": f"tiny-{task}-{method}",
        "task": task,
        "output_dir": str(out),
        "model": {"base": str(base), "max_length": 48},
        "data": {"source": str(data), "split": {"test_size": 0.25, "validation_size": 0.2}},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "training": {
            "max_steps": 2,
            "batch_size": 4,
            "eval_batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "early_stopping_patience": None,
            "warmup_fraction": 0.0,
            "num_threads": 1,
        },
    }


def build_spec(tmp_path: Path, method: str = "lora", arch: str = "t5") -> Any:
    from honed.spec import parse_spec

    base = save_base(tmp_path / f"base-{arch}", arch)
    data = write_jsonl(tmp_path / "bills.jsonl", summary_rows())
    return parse_spec(spec_dict(base, data, method, TASK, tmp_path / "run"))
