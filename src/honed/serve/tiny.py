"""Tiny random models for tests and benchmarks (built in-process, no downloads).

`build_tiny_llm(dir)` writes a 2-layer Llama (hidden 32) with a byte-level BPE tokenizer that
has pad/eos tokens and a chat template; `build_tiny_adapters(base, dir, k)` writes k random
LoRA adapters; `build_tiny_classifier(dir)` writes a BertForSequenceClassification folder.
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = [
    "hello world this is a test of the tiny model",
    "the quick brown fox jumps over the lazy dog",
    "user: what is the weather like today? assistant: sunny and warm",
    "profits rose sharply while losses fell in the third quarter",
    "the market was flat and nothing much happened at all",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llm(out: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_adapters(base: Path, out: Path, k: int = 3, rank: int = 4) -> list[Path]:
    """k LoRA adapters with random (non-zero) B matrices so each changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(k):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(str(base))
        cfg = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, cfg)
        path = out / f"adapter{i}"
        peft_model.save_pretrained(path)
        _rewrite_base(path, base)
        paths.append(path)
    return paths


def _rewrite_base(adapter: Path, base: Path) -> None:
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_file.write_text(json.dumps(cfg, indent=2))


def build_tiny_classifier(
    out: Path, labels: tuple[str, ...] = ("negative", "neutral", "positive"), seed: int = 0
) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
        pad_token_id=tok.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out
