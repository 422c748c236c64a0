"""Registered versions as MLflow models: a pyfunc wrapper around honed's own loaders.

Each version's run folder is the artifact ``model`` of a ``python_function`` model, so stock
MLflow loads it::

    import mlflow, honed.registry
    mlflow.set_tracking_uri(honed.registry.tracking_uri())
    model = mlflow.pyfunc.load_model("models:/financial-sentiment@champion")
    model.predict(["profit rose"])              # or pd.DataFrame({"text": [...]})

Classifiers return ``label``, ``score`` and ``scores`` (the /v1/classify shape); generative
models (sft, dpo, seq2seq) return ``generated_text`` from greedy decoding
(``params={"max_new_tokens": N}``); entity taggers (ner) return ``entities``, a list of
``{entity, start, end, score}`` character spans per text. The honed folder stays a plain
transformers/peft folder inside the model (``artifacts/model``), which ``honed predict`` and
``honed serve`` read too.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

ARTIFACT = "model"  # the run folder's key (and folder name) inside the MLflow model
CLASSIFIERS = {"classification"}
GENERATIVE = {"sft", "dpo", "grpo", "seq2seq"}
TAGGERS = {"ner"}
MAX_NEW_TOKENS = 64
# What the wrapper imports at load time; pinned to the versions that trained the model.
_REQUIREMENTS = ("honed", "mlflow", "torch", "transformers", "peft", "safetensors", "pandas")


def _texts(model_input: Any) -> list[str]:
    """A DataFrame (its ``text`` column, else its only column), a list, or one string."""
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        column = "text" if "text" in columns else columns[0]
        return [str(t) for t in model_input[column].tolist()]
    return [str(t) for t in model_input]


def _predictor_class() -> type:
    from honed.models.predict import Predictor

    return Predictor


class Generator:
    """Greedy generation with the saved tokenizer (chat template for decoder-only chat models)."""

    def __init__(self, folder: Path, task: str):
        import transformers
        from transformers import AutoTokenizer

        self.seq2seq = task == "seq2seq"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if (folder / "adapter_config.json").is_file():
            from honed.models.adapters import load_adapter_model

            self.model = load_adapter_model(folder).merge_and_unload()
        else:
            auto = "AutoModelForSeq2SeqLM" if self.seq2seq else "AutoModelForCausalLM"
            loader = getattr(transformers, auto)
            self.model = loader.from_pretrained(str(folder), use_safetensors=True)
        self.model.eval()

    def _prompt_ids(self, text: str) -> Any:
        tok = self.tokenizer
        if not self.seq2seq and tok.chat_template:
            messages = [{"role": "user", "content": text}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
            return ids["input_ids"]
        return tok(text)["input_ids"]

    def __call__(self, texts: list[str], max_new_tokens: int) -> list[str]:
        import torch

        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        out = []
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding side to get wrong, small models
                ids = torch.tensor([self._prompt_ids(text)])
                generated = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
                new = generated[0] if self.seq2seq else generated[0, ids.shape[1] :]
                out.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        return out


def model_task(folder: Path) -> str:
    from honed.registry.lineage import read_lineage

    return str(read_lineage(folder).get("task") or "classification")


def _verify(folder: Path, context: Any) -> None:
    """The files' sha256 against the manifest recorded when the model was logged (its
    model_config); a model logged before manifests were recorded has none to check."""
    from honed.security.supply import MANIFEST_TAG, verify_manifest

    recorded = (getattr(context, "model_config", None) or {}).get(MANIFEST_TAG)
    if recorded:
        verify_manifest(folder, recorded, "the MLflow model")


class HonedModel(mlflow.pyfunc.PythonModel):
    """Loads a honed model folder with honed's loaders; texts in, labels or text out."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        _verify(folder, context)
        self.task = model_task(folder)
        if self.task in CLASSIFIERS:
            self.predictor = _predictor_class().from_folder(folder)
        elif self.task in GENERATIVE:
            self.generator = Generator(folder, self.task)
        elif self.task in TAGGERS:
            from honed.models.tagger import Tagger

            self.tagger = Tagger(folder)
        else:
            from honed.errors import ModelError

            raise ModelError(
                f"{folder}: a {self.task!r} model has no pyfunc predict; "
                "load the folder with honed instead (e.g. `honed score` for reward models)"
            )

    # model_input is a DataFrame: MLflow turns lists and strings into one under the signature
    # (a DataFrame hint also stops MLflow deriving a second signature from the hints).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        texts = _texts(model_input)
        if self.task in CLASSIFIERS:
            return pd.DataFrame(self.predictor.predict(texts), columns=["label", "score", "scores"])
        if self.task in TAGGERS:
            found = [[vars(e) for e in row] for row in self.tagger(texts)]
            return pd.DataFrame({"entities": found})
        max_new = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        return pd.DataFrame({"generated_text": self.generator(texts, max_new)})


def signature(task: str) -> Any:
    """Input: one string column (``text``; a list of strings works too). Output per task."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Map, Object, Property

    # Unnamed, so a plain list of strings passes MLflow's schema check as well as a DataFrame.
    inputs = Schema([ColSpec("string")])
    if task in GENERATIVE:
        outputs = Schema([ColSpec("string", "generated_text")])
        params = ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)])
        return ModelSignature(inputs, outputs, params)
    if task in TAGGERS:
        span = Object(
            [Property("entity", "string"), Property("start", "long"), Property("end", "long"),
             Property("score", "double")]
        )  # fmt: skip
        return ModelSignature(inputs, Schema([ColSpec(Array(span), "entities")]))
    outputs = Schema(
        [ColSpec("string", "label"), ColSpec("double", "score"), ColSpec(Map("double"), "scores")]
    )
    return ModelSignature(inputs, outputs)


def pip_requirements() -> list[str]:
    """Pinned from the installed packages (no network, no import sniffing)."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # a local label (+cpu) is not on PyPI
    return pins
