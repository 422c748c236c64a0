"""Classification heads: the architecture's own (CLS pooler) or masked mean pooling.

Sentence-transformers encoders such as all-MiniLM-L6-v2 were trained to be read through the
mean of their token vectors; their CLS pooler was never trained for that. Putting the
classifier on the masked mean keeps what pre-training learnt (on the PhraseBank demo it lifted
validation accuracy after one epoch from 0.84 to 0.90). ``pooling: auto`` picks mean pooling
when the base folder says its sentence embedding is the token mean (``1_Pooling/config.json``).

A mean-pooled classifier is saved as its own architecture: ``model_type``
``honed_mean_pool_<base type>`` (e.g. honed_mean_pool_bert), ``architectures``
``HonedMeanPool<Base>ForSequenceClassification`` and an ``auto_map`` naming
``modeling_honed.py``, which is written into the folder (``honed.models.mean_pooling`` plus
the two classes). Why: saved as plain ``bert``, stock ``AutoModelForSequenceClassification``
and ``pipeline()`` loaded it as a CLS-pooled BERT with a random pooler, silently giving wrong
labels. Now they refuse the folder unless the *user* allows its code to run (transformers'
remote-code opt-in), and then run exactly honed's forward pass. honed itself never sets that
flag: its own loads use its own classes, and a base's remote code runs only when the spec
says ``model.trust_remote_code``. CLS-pooled classifiers stay stock architectures.

``load_classifier`` reads both forms (and older folders: ``model_type: bert`` with
``honed_pooling: mean``) with honed's own classes, never running the folder's code.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models import mean_pooling
from honed.models.mean_pooling import MODEL_TYPE_PREFIX, MeanPoolingMixin

POOLING_ATTR = "honed_pooling"
#: The file a mean-pooled run folder carries its model code in (named by config.auto_map).
MODULE_FILE = "modeling_honed.py"


def sentence_transformers_pooling(folder: Path) -> str | None:
    """'mean' or 'cls' when the folder is a sentence-transformers model, else None."""
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    if data.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if data.get("pooling_mode_cls_token") else None


def resolve_pooling(requested: str, folder: Path) -> str:
    if requested != "auto":
        return requested
    return sentence_transformers_pooling(folder) or "cls"


@dataclass(frozen=True)
class MeanPoolClasses:
    """The config and model classes of a mean-pooled classifier over one base architecture."""

    config: type
    model: type
    module_source: str  # what `modeling_honed.py` holds for this architecture


_CLASSES: dict[type, MeanPoolClasses] = {}

_CLASSES_SOURCE = """

# --- The classes of this model (written by honed for base model_type {base_type!r}) ---
from transformers import {base_config}, {base_model}  # noqa: E402


class {config}({base_config}):
    model_type = "{model_type}"


class {model}(MeanPoolingMixin, {base_model}):
    config_class = {config}
"""


class _SavesItsCode:
    """Writes ``modeling_honed.py`` next to every ``config.json`` the model saves, so the
    folder's ``auto_map`` always points at code that is there (run folder, checkpoints,
    merged adapters)."""

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        classes = mean_pool_classes(type(self.config).__mro__[1])  # type: ignore[attr-defined]
        (Path(save_directory) / MODULE_FILE).write_text(classes.module_source, encoding="utf-8")
        return out


def mean_pool_classes(base_config_cls: type) -> MeanPoolClasses:
    """Config + model classes (``model_type`` honed_mean_pool_<base type>) for a base config
    class; built once per base, the same classes ``modeling_honed.py`` defines for users."""
    if base_config_cls in _CLASSES:
        return _CLASSES[base_config_cls]
    from transformers import AutoModelForSequenceClassification

    try:
        base_model = AutoModelForSequenceClassification._model_mapping[base_config_cls]
    except KeyError:
        raise ModelError(
            f"pooling 'mean': model type {base_config_cls.model_type!r} has no sequence "
            "classification architecture in transformers"
        ) from None
    model_type = MODEL_TYPE_PREFIX + base_config_cls.model_type
    names = {
        "base_type": base_config_cls.model_type,
        "base_config": base_config_cls.__name__,
        "base_model": base_model.__name__,
        "config": f"HonedMeanPool{base_config_cls.__name__}",
        "model": f"HonedMeanPool{base_model.__name__}",
        "model_type": model_type,
    }
    config_cls = type(names["config"], (base_config_cls,), {"model_type": model_type})
    model_cls = type(
        names["model"], (_SavesItsCode, MeanPoolingMixin, base_model), {"config_class": config_cls}
    )
    source = inspect.getsource(mean_pooling) + _CLASSES_SOURCE.format(**names)
    _CLASSES[base_config_cls] = MeanPoolClasses(config_cls, model_cls, source)
    return _CLASSES[base_config_cls]


def _base_config_class(model_type: str) -> type:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        raise ModelError(f"unknown base model_type {model_type!r} for mean pooling") from None


def mean_pool_config(config: Any) -> Any:
    """`config` (a stock one, or an older honed save's) as the mean-pooled classifier config:
    own model_type, ``auto_map`` to ``modeling_honed.py``, ``honed_pooling: mean``."""
    base_cls = type(config)
    if base_cls.model_type.startswith(MODEL_TYPE_PREFIX):
        base_cls = base_cls.__mro__[1]
    classes = mean_pool_classes(base_cls)
    data = config.to_dict()
    data.pop("model_type", None)
    data.pop("auto_map", None)
    new = classes.config.from_dict(data)
    module = MODULE_FILE.removesuffix(".py")
    new.auto_map = {
        "AutoConfig": f"{module}.{classes.config.__name__}",
        "AutoModelForSequenceClassification": f"{module}.{classes.model.__name__}",
    }
    setattr(new, POOLING_ATTR, "mean")
    return new


def _check_mean_supported(model: Any) -> None:
    import torch

    if not (
        isinstance(getattr(model, "classifier", None), torch.nn.Linear)
        and hasattr(model, "dropout")
    ):
        raise ModelError(
            f"pooling 'mean' is not supported for model type {model.config.model_type!r} "
            "(its classification head is not a single linear layer); use pooling: cls"
        )


def _saved_model_type(path: Path) -> str:
    raw = path / "config.json"
    return str(json.loads(raw.read_text()).get("model_type", "")) if raw.is_file() else ""


def _read_config(path: Path, trust_remote_code: bool, **config_kwargs: Any) -> Any:
    """The folder's config; a honed mean-pooled one is read with honed's own classes (no
    remote code runs, nothing is registered globally)."""
    from transformers import AutoConfig

    model_type = _saved_model_type(path)
    if model_type.startswith(MODEL_TYPE_PREFIX):
        base_cls = _base_config_class(model_type.removeprefix(MODEL_TYPE_PREFIX))
        return mean_pool_classes(base_cls).config.from_pretrained(str(path), **config_kwargs)
    return AutoConfig.from_pretrained(
        str(path), trust_remote_code=trust_remote_code, **config_kwargs
    )


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model folder. AutoTokenizer reads the folder's config to pick a
    class; a mean-pooled config is handed over already read, so that stock transformers never
    asks whether to run the folder's code (it prompts on a terminal)."""
    from transformers import AutoTokenizer

    path = Path(path)
    mean_pooled = _saved_model_type(path).startswith(MODEL_TYPE_PREFIX)
    config = _read_config(path, trust_remote_code=False) if mean_pooled else None
    return AutoTokenizer.from_pretrained(str(path), config=config)


def load_classifier(path: str | Path, pooling: str | None = None, **kwargs: Any) -> Any:
    """A sequence classifier from `path` with the requested (or saved) pooling.

    ``pooling=None`` reads the saved choice (``honed_pooling`` in config.json), default 'cls'.
    Mean pooling gives a ``HonedMeanPool*`` model whose config saves its own model_type and
    an ``auto_map`` to ``modeling_honed.py``: stock transformers refuses such a folder without
    ``trust_remote_code`` instead of silently loading a CLS-pooled model.
    """
    from transformers import AutoModelForSequenceClassification

    config_kwargs = {
        k: kwargs.pop(k) for k in ("num_labels", "id2label", "label2id") if k in kwargs
    }
    config = _read_config(Path(path), kwargs.get("trust_remote_code", False), **config_kwargs)
    pooling = pooling or getattr(config, POOLING_ATTR, None) or "cls"
    if pooling == "cls":
        setattr(config, POOLING_ATTR, pooling)
        return AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, **kwargs
        )
    config = mean_pool_config(config)
    kwargs.pop("trust_remote_code", None)  # honed's own class: no remote code to trust
    model_cls = mean_pool_classes(type(config).__mro__[1]).model
    model = model_cls.from_pretrained(str(path), config=config, **kwargs)
    _check_mean_supported(model)
    return model
