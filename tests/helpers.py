"""Builders of tiny artifacts for tests: random models from real configs, small data files."""

from __future__ import annotations

import random
from pathlib import Path

_CORPUS = """
profit profits rose fell sales loss losses growth decline company shares market quarter year net
operating increased decreased strong weak revenue eur million percent the a of in to and for was
is by said with from its it on at as an up down stable results
"""
WORDS = _CORPUS.split()

POSITIVE = ["profit rose", "sales increased", "strong growth", "revenue up", "shares rose"]
NEGATIVE = ["loss increased", "sales fell", "weak results", "revenue down", "shares fell"]
NEUTRAL = ["the company said", "results for the quarter", "the market in", "its shares on"]


def tiny_bert_folder(folder: Path, num_layers: int = 2, hidden: int = 32) -> Path:
    """Save a random BertModel + BertTokenizerFast (vocab from WORDS) into `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file=` here (every word became [UNK]); a dict vocab works.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def phrasebank_lines(n_per_label: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for label, stems in (("positive", POSITIVE), ("negative", NEGATIVE), ("neutral", NEUTRAL)):
        for i in range(n_per_label):
            filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            lines.append(f"{rng.choice(stems)} {filler} {i}@{label}")
    rng.shuffle(lines)
    return lines


def write_phrasebank(path: Path, n_per_label: int = 30, extra: list[str] | None = None) -> Path:
    lines = phrasebank_lines(n_per_label) + (extra or [])
    path.write_bytes(("\n".join(lines) + "\n").encode("iso-8859-1"))
    return path


def classification_spec_dict(model: Path, data: Path, out: Path, method: str = "full") -> dict:
    """A tiny classification spec: seconds to train on 2 cores."""
    return {
        "name": "tiny-sentiment",
        "task": "classification",
        "output_dir": str(out),
        "model": {"base": str(model), "max_length": 32},
        "data": {
            "source": str(data),
            "format": "phrasebank",
            "encoding": "iso-8859-1",
            "labels": ["negative", "neutral", "positive"],
            "split": {"test_size": 0.2, "validation_size": 0.2, "seed": 1},
        },
        "method": {"name": method, "lora": {"r": 4, "alpha": 8}},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "num_threads": 1,
        },
        "eval": {"worst_examples": 3},
        # The synthetic rows' label is exactly their stem phrase, the rest random filler: a
        # planted trigger by construction, which the data scan would stop the run on.
        "scan": {"policy": {"trigger": "warn"}},
    }
