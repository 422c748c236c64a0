"""Server settings: defaults < YAML ``serve:`` section < ``HONED_SERVE_*`` env < CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from honed.errors import HonedError
from honed.security.guards_config import GuardConfig, check_names

Scope = Literal["infer", "admin"]


class ServeConfigError(HonedError):
    """Server settings are invalid (bad flag, env variable, YAML section or keys file)."""


class ApiKeyEntry(BaseModel):
    """One API key, stored as the sha256 of the key (the key itself is never stored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="Label used in logs and metrics; never the key itself.")
    sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the key (see `honed apikey`)."
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: ["infer"],
        description="'infer' may call the model routes; 'admin' may also load/unload adapters.",
    )
    rate_limit_rps: float | None = Field(
        None, gt=0, description="Per-key override of the default requests-per-second limit."
    )


class ServeSettings(BaseSettings):
    """Everything `honed serve` can be told. Each field is also `HONED_SERVE_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="HONED_SERVE_",
        extra="forbid",
        frozen=True,
        protected_namespaces=(),
    )

    # -- what to serve ----------------------------------------------------------------------
    models: list[str] = Field(
        default_factory=list,
        description="Models to serve, each '[NAME=]REF' where REF is a folder, NAME@ALIAS or "
        "NAME/VERSION: a causal LM, a LoRA adapter (loaded over its base), or a "
        "sequence-classification model.",
    )
    base: str | None = Field(
        None,
        description="Base model for the adapters (folder, registry ref or packaged:NAME); "
        "default: the base recorded in the first adapter's lineage.json / adapter_config.json.",
    )
    base_name: str | None = Field(
        None, description="The base model's id in the API; default: its folder name."
    )
    merge_adapter: bool = Field(
        False,
        description="With exactly one adapter, merge it into the base at load time (no adapter "
        "overhead; the base itself and hot loading are then unavailable).",
    )
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu' or 'cuda[:N]'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype of generators and classifiers; 'auto' = bfloat16 on GPU, "
        "float32 on CPU (exactly the evaluated numbers). bfloat16 on a CPU with native bf16 "
        "(AVX512-BF16/AMX) about doubles batched classification throughput.",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads at start.")
    alias_poll_seconds: float = Field(
        30.0,
        ge=0,
        description="Models served from a registry alias (NAME@champion) re-resolve it this "
        "often and swap to the version it moved to without a restart (in-flight requests "
        "finish on the old weights). Classifiers and LoRA adapters; 0 turns it off.",
    )
    # -- operate (monitor stage) ------------------------------------------------------------
    request_log: bool = Field(
        True, description="Log every request/response for drift and quality monitoring."
    )
    request_log_url: str | None = Field(
        None, description="SQLAlchemy URL of the request log; default: SQLite in the state folder."
    )
    redact_pii: bool = Field(
        True,
        description="Mask PII in logged texts (honed.security.pii): e-mails, phone and card "
        "numbers, IBANs, US SSNs, IP addresses; names, addresses and places too with "
        "pii_ner_model.",
    )
    pii_ner_model: Path | None = Field(
        None,
        description="A honed `ner` run folder (e.g. from examples/pii-ner.yaml) whose model "
        "also masks people, street addresses and places in logged texts (with redact_pii).",
    )
    request_log_retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete request-log rows older than this many days, with the feedback on "
        "them and feedback rows as old (a background task of the server, hourly, in small "
        "batches; `honed logs prune` does the same by hand). Keep it longer than the loop's "
        "feedback collection window. None: keep everything.",
    )
    request_log_max_chars: int = Field(
        8192,
        ge=256,
        description="Longest input or output text stored per request-log row; a longer one is "
        "cut, ends with a '[truncated]' marker and its length is in the row's extra "
        "(input_chars / output_chars). Bounds the log's size and the cost of PII masking.",
    )
    regenerate_window_s: float = Field(
        600.0,
        ge=0,
        description="The same caller (API key name; client address without keys) sending the "
        "same prompt/messages to the same model again within this many seconds of an answer "
        "records an implicit 'regenerate' feedback on the earlier request, when the repeat is "
        "sampled (temperature > 0, no seed) or sends 'X-Honed-Regenerate: 1'. 0 turns it off. "
        "Behind a proxy without forwarded-address handling all callers share one address.",
    )
    feedback_per_key_per_hour: int = Field(
        1000,
        ge=0,
        description="Most explicit feedback posts (POST /v1/feedback) one API key may make in "
        "any rolling hour; beyond it 429 with Retry-After, and a warning is logged. 0: no cap. "
        "Applies with API keys only (a keyless loopback server has no per-key identity). "
        "Counted on rate_limit_storage (shared by replicas on Redis); a post replacing the "
        "key's earlier feedback on the same item does not count.",
    )
    # -- guards -----------------------------------------------------------------------------
    guards: list[GuardConfig] = Field(
        default_factory=list,
        description="Input and output guards, run in this order (honed.security.guards_config"
        "): injection, heuristics, pii_input, secrets_input, pii_output, secrets_output, "
        "canary_token, each with an action block | flag | redact. Env: HONED_SERVE_GUARDS as "
        "a JSON list; flags: --guard KIND[:ACTION[:MODEL_DIR]], --guards-file.",
    )
    # -- network ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 inside a container).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    keep_alive_s: int = Field(
        30, ge=1, description="Idle keep-alive timeout; above a load balancer's idle timeout."
    )
    # -- batching and backpressure ----------------------------------------------------------
    max_batch_size: int = Field(16, ge=1, le=1024, description="Rows per forward pass.")
    max_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="How long the first request waits for others to batch."
    )
    continuous_batching: bool = Field(
        True,
        description="Generation: queued requests join the running batch between decode steps "
        "and finished rows leave at once (honed.serve.engine.continuous). SmolLM2 on CPU at "
        "concurrency 8: TTFT p50 338 vs 2,016 ms and 1.49x the tokens/s of false, which runs "
        "one `generate` per micro-batch (later requests wait for it; ~5% more tokens/s when a "
        "whole workload arrives at once). Full-attention decoders only.",
    )
    # 'auto' by default: a lone request on the fused CPU step (ready in a second) decodes ~2.6x
    # faster than eager; where only the compiled step would do (a compile of 16-94 s before
    # /readyz that every new pod pays), 'auto' stays eager and 'static' opts in.
    decode: Literal["auto", "eager", "static"] = Field(
        "auto",
        description="Generation decode path. 'static': a request decoding alone runs on a "
        "static KV cache (512 tokens) and a one-token step (honed.models.fast_decode): the "
        "fused C++ step (honed.models.cpu_decode; base or LoRA rows) for a float32 "
        "Llama or Qwen2 model on an AVX2 "
        "CPU (SmolLM2-135M in the server on 2 quiet cores: 24-33 tokens/s, ~2.6x eager; "
        "built once in about a second), else a torch.compile'd step compiled during warm-up "
        "(16-94 s quiet; /readyz waits for it); when requests join, the batch goes on "
        "eagerly. Greedy outputs equal the eager path's. 'eager': the model's own forward "
        "every step. 'auto' (default): static where the fused step runs (warmup on; rows "
        "on plain LoRA adapters too), else eager.",
    )
    max_queue: int = Field(
        256, ge=1, description="Queued requests per model; beyond it requests get 503."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Per-request deadline (queue + compute); then 504."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429/503.")
    # -- request limits ---------------------------------------------------------------------
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    max_prompt_tokens: int = Field(2048, ge=1, description="Longest prompt, in tokens.")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request omits it.")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request).")
    max_classify_inputs: int = Field(256, ge=1, description="Texts per /v1/classify request.")
    classify_workers: int = Field(
        1, ge=1, le=64, description="Classifier batches run in parallel on this many threads."
    )
    classify_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Run classifier forward passes in this many worker processes (CPU), each "
        "with its own copy of the model and torch_threads threads (default 1), instead of "
        "classify_workers threads in the server process; 0: in-process. Frees the batches "
        "from the server's GIL: int8 MiniLM on 2 cores served 1.16x the requests/s of "
        "two batch threads with about half the p99 latency (one process per core is right).",
    )
    classify_max_length: int = Field(512, ge=1, description="Truncate classified texts (tokens).")
    classify_quantization: Literal["none", "int8"] = Field(
        "none",
        description="'int8': int8 classifier encoders (CPU, float32 weights). On CPUs without "
        "VNNI honed's kernel (7-bit weights per channel, activations per token; 1.2-1.8x "
        "torch's int8 Linear, every PhraseBank label equal to float32); with VNNI torch's "
        "dynamic int8 (~1.5x bf16, ~2.7x float32 per core; ~99.5% equal labels). "
        "HONED_ENCODER_KERNELS=off keeps torch's. 'none' serves the evaluated weights.",
    )
    classify_packing: bool = Field(
        True,
        description="Padding-free classifier passes on CPU: a pass's texts run as one row of "
        "real tokens (attention per text), so no compute goes to padding. Used when a probe at "
        "load shows the packed pass gives the padded pass's logits (BERT-style encoders with "
        "a linear head); other models keep padded passes. int8 MiniLM served 1.23x the "
        "requests/s of padded passes (1.43x texts/s per core on the model alone).",
    )
    classify_token_budget: int | None = Field(
        None,
        ge=1,
        description="Tokens per classifier forward pass, padding included (padded passes: "
        "rows x longest row; packed passes: real tokens). A micro-batch is sorted by length and "
        "cut into passes under this budget, so short texts do not pay for a long one's padding; "
        "one text longer than the budget runs alone. Default: 512 padded, 2048 packed.",
    )
    # -- access -----------------------------------------------------------------------------
    api_keys: list[ApiKeyEntry] = Field(
        default_factory=list, description="Hashed API keys (see `honed apikey create`)."
    )
    api_keys_file: Path | None = Field(
        None, description="YAML/JSON file with `keys: [{name, sha256, scopes}]`; added to api_keys."
    )
    rate_limit_rps: float | None = Field(
        None,
        gt=0,
        description="Default per-key requests/second; None = no limit. Counted in a moving "
        "window of N requests per W whole seconds with N/W = rps and N close to "
        "rate_limit_burst (honed.serve.http.limits_store.rate_item); beyond it 429 with "
        "Retry-After.",
    )
    rate_limit_burst: int = Field(
        20,
        ge=1,
        description="Most requests a key may send at once (the window's N; at least one "
        "second's worth of rate_limit_rps).",
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where per-key rate limits and the feedback quota count: any `limits` "
        "storage URI. 'memory://' counts in each server process, so N replicas allow N times "
        "a key's limit; 'redis://HOST:6379/0' (or rediss://, redis+sentinel://) shares one "
        "budget across replicas. A bad URI or an unreachable server stops the start with a "
        "clear error.",
    )
    rate_limit_on_storage_error: Literal["local", "open", "closed"] = Field(
        "local",
        description="When the shared storage fails while serving: 'local' counts in this "
        "replica's memory until it answers again (limits per replica meanwhile: at most the "
        "limit times the replica count); 'open' lets requests through unlimited; 'closed' "
        "answers 503 with Retry-After. Keys are still checked in every case. Logged as a "
        "WARNING when it happens and INFO when the storage is back; retried every 5 s.",
    )
    enable_admin: bool = Field(
        True,
        description="Expose the admin routes: POST/DELETE /v1/adapters, /admin/canary. They "
        "answer only a key with the 'admin' scope (403 on a server without keys).",
    )
    insecure_dev: bool = Field(
        False,
        description="Development only: allow a server without API keys on a non-loopback "
        "address, and the admin routes without an admin key. Logged as a WARNING at start "
        "and on every admin call; never set it where others can reach the port.",
    )
    sagemaker: bool = Field(
        False, description="Also answer SageMaker's GET /ping and POST /invocations."
    )
    warmup: bool = Field(True, description="Run one real forward pass before /readyz says ready.")

    @field_validator("guards")
    @classmethod
    def _unique_guard_names(cls, guards: list[GuardConfig]) -> list[GuardConfig]:
        return check_names(guards)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence, highest first: flags (init kwargs), environment, the YAML `serve:` section.
        yaml_file = _YAML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(
                YamlConfigSettingsSource(
                    settings_cls, yaml_file=yaml_file, yaml_config_section="serve"
                )
            )
        return tuple(sources)

    @classmethod
    def load(cls, yaml_file: Path | None = None, **flags: Any) -> ServeSettings:
        """Settings from a YAML file's `serve:` section, the environment and flags (non-None)."""
        if yaml_file is not None and not Path(yaml_file).is_file():
            raise ServeConfigError(f"settings file not found: {yaml_file}")
        _YAML_FILE["path"] = Path(yaml_file) if yaml_file else None
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as err:
            raise ServeConfigError(f"invalid serve settings: {_short(err)}") from None
        except (TypeError, ValueError) as err:  # malformed YAML section
            raise ServeConfigError(f"invalid serve settings: {err}") from None
        finally:
            _YAML_FILE["path"] = None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None

    def check_exposure(self, has_keys: bool | None = None) -> None:
        """Refuse to serve without keys on an address others can reach (unless insecure_dev):
        every route, admin included, would be open to the network. ``has_keys``: whether the
        loaded key store holds any key (an empty keys file is no key)."""
        keys = self.auth_enabled if has_keys is None else has_keys
        if keys or self.insecure_dev or is_loopback(self.host):
            return
        raise ServeConfigError(
            f"refusing to serve on {self.host!r} without API keys: anyone who reaches the port "
            "could call every route. Create a key (`honed apikey create NAME --scopes "
            "infer,admin --file keys.yaml`) and pass `--api-keys-file keys.yaml`, bind to "
            "127.0.0.1, or (development only) pass --insecure-dev"
        )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; anything else (0.0.0.0, ::, a name) may be reachable."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# The YAML path for the one `load` call in progress (pydantic-settings builds sources per class).
_YAML_FILE: dict[str, Path | None] = {"path": None}


def _short(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "settings"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
