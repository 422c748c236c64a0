"""CLI: `honed serve`, `honed apikey create`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

_SERVE_FLAGS = (  # (flag, settings field, type, help)
    ("--host", "host", str, "bind address (default 127.0.0.1)"),
    ("--port", "port", int, "TCP port (default 8000)"),
    ("--base", "base", str, "base model for the adapters (folder, ref or packaged:NAME)"),
    ("--base-name", "base_name", str, "the base model's id in the API"),
    ("--api-keys-file", "api_keys_file", Path, "hashed API keys (see `honed apikey create`)"),
    ("--max-batch-size", "max_batch_size", int, "rows per forward pass"),
    ("--max-wait-ms", "max_wait_ms", float, "batching window in milliseconds"),
    ("--max-queue", "max_queue", int, "queued requests per model before 503"),
    ("--device", "device", str, "auto, cpu or cuda[:N]"),
    ("--dtype", "dtype", str, "auto, float32, bfloat16 or float16"),
    ("--rate-limit-rps", "rate_limit_rps", float, "per-key requests per second"),
    (
        "--rate-limit-storage",
        "rate_limit_storage",
        str,
        "where rate limits count: memory:// (per process) or redis://HOST:6379/0 (shared)",
    ),
    (
        "--request-log-max-chars",
        "request_log_max_chars",
        int,
        "longest text stored per request-log row (default 8192; longer ones are cut)",
    ),
    ("--classify-workers", "classify_workers", int, "parallel classifier batch threads"),
    (
        "--classify-processes",
        "classify_processes",
        int,
        "run classifiers in N worker processes (CPU; 0: in-process threads)",
    ),
    ("--classify-quantization", "classify_quantization", str, "none or int8 (CPU)"),
    (
        "--alias-poll-seconds",
        "alias_poll_seconds",
        float,
        "models served as NAME@ALIAS follow the alias this often (default 30; 0: off)",
    ),
    (
        "--classify-token-budget",
        "classify_token_budget",
        int,
        "tokens per classifier pass, padding included (default 512 padded, 2048 packed)",
    ),
)


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_apikey(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server for models and adapters",
        description="Serve classifiers and generators over HTTP (OpenAI-compatible chat and "
        "completions, /v1/classify), with API keys, request logging and Prometheus metrics.",
    )
    p.add_argument("models", nargs="*", help="[NAME=]REF: folder, NAME@ALIAS or NAME/VERSION")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=REF",
        help="an adapter over the base (repeatable)",
    )
    p.add_argument("--config", type=Path, help="YAML file with a `serve:` section")
    p.add_argument(
        "--merge-adapter",
        action="store_true",
        default=None,
        help="merge the single adapter into the base at load",
    )
    p.add_argument(
        "--no-continuous-batching",
        dest="continuous_batching",
        action="store_false",
        default=None,
        help="generation: one `generate` per micro-batch (later requests wait for it)",
    )
    p.add_argument(
        "--decode",
        choices=["auto", "eager", "static"],
        default=None,
        help="generation decode path for a lone request: auto (default: the fused CPU step "
        "where it runs, else eager), static (the fused step, else a step compiled at start: "
        "a minute or more) or eager",
    )
    p.add_argument(
        "--no-classify-packing",
        dest="classify_packing",
        action="store_false",
        default=None,
        help="padded classifier passes only (packing is on by default on CPU)",
    )
    for flag, _, typ, text in _SERVE_FLAGS:
        p.add_argument(flag, type=typ, help=text)
    p.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="KIND[:ACTION[:MODEL_DIR]]",
        help="a guard (repeatable): injection, heuristics, pii_input, secrets_input, "
        "pii_output, secrets_output, canary_token; action block, flag or redact; e.g. "
        "injection:block:runs/guard/model",
    )
    p.add_argument("--guards-file", type=Path, help="YAML/JSON list of guards (all fields)")
    p.add_argument(
        "--insecure-dev",
        action="store_true",
        default=None,
        help="development only: no keys needed on a non-loopback address nor for admin routes "
        "(loud warnings; never where others reach the port)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.set_defaults(func=_serve)


def _register_apikey(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apikey",
        help="API keys for `honed serve`",
        description="Manage the keys file `honed serve` checks bearer tokens against.",
    )
    psub = p.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    create = psub.add_parser(
        "create",
        help="make a key; its sha256 goes to the keys file",
        description="Print a new random key once and store only its sha256 in the keys file.",
    )
    create.add_argument("name", help="label for logs and metrics")
    create.add_argument("--scopes", default="infer", help="comma list: infer, admin")
    create.add_argument("--file", type=Path, default=Path("keys.yaml"), help="keys file")
    create.set_defaults(func=_apikey_create)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from honed.serve.http.app import create_app
    from honed.serve.http.auth import KeyStore, access_log_config
    from honed.serve.settings import ServeSettings

    flags = {
        field: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, field, _, _ in _SERVE_FLAGS
    }
    models = list(args.models) + list(args.adapter)
    if models:
        flags["models"] = models
    flags["merge_adapter"] = args.merge_adapter
    flags["classify_packing"] = args.classify_packing
    flags["continuous_batching"] = args.continuous_batching
    flags["decode"] = args.decode
    flags["guards"] = _guards(args)
    flags["insecure_dev"] = args.insecure_dev
    settings = ServeSettings.load(args.config, **flags)
    settings.check_exposure(KeyStore.from_settings(settings).enabled)
    _check_models(settings)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=access_log_config(),
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


def _guards(args: argparse.Namespace) -> list | None:
    """--guards-file's guards, then each --guard; None: no flag (YAML / env decide)."""
    from honed.security.guards_config import load_guards_file, parse_guard_flag

    guards = load_guards_file(args.guards_file) if args.guards_file else []
    guards += [parse_guard_flag(g) for g in args.guard]
    return guards if args.guards_file or args.guard else None


def _check_models(settings) -> None:
    """Fail at once on a typo'd model ref instead of serving 503 from /readyz forever."""
    from honed.serve.engine.loading import parse_entry, resolve_folder
    from honed.serve.settings import ServeConfigError

    if not settings.models and not settings.base:
        raise ServeConfigError("nothing to serve: name a model (folder, NAME@ALIAS, NAME/VERSION)")
    for entry in settings.models:
        parse_entry(entry)
    if settings.base:
        resolve_folder(settings.base)


def _apikey_create(args: argparse.Namespace) -> int:
    from honed.serve.http.auth import append_key
    from honed.serve.settings import ServeConfigError

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    bad = sorted(set(scopes) - {"infer", "admin"})
    if bad or not scopes:
        raise ServeConfigError(f"--scopes: unknown scope(s) {bad}; use infer and/or admin")
    key = append_key(args.file, args.name, scopes)
    from honed.security.audit import local_actor, record

    record("apikey.created", local_actor(), name=args.name, scopes=scopes, file=str(args.file))
    print(f"added {args.name!r} ({','.join(scopes)}) to {args.file}; the key (shown once):")
    print(key)
    return 0
