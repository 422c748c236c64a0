"""From settings to a loaded Engine: which folder is the base, which are adapters/classifiers."""

from __future__ import annotations

import logging

from honed.errors import ModelError
from honed.serve.engine import loading
from honed.serve.engine.classifier import ClassifierModel
from honed.serve.engine.core import Engine
from honed.serve.engine.generative import AdapterSlot, GenerativeModel
from honed.serve.engine.loading import ModelRef
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")


def build_engine(settings: ServeSettings) -> Engine:
    if not settings.models and not settings.base:
        raise ModelError("nothing to serve: give at least one model (folder or registry ref)")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    entries = [loading.parse_entry(e) for e in settings.models]
    _check_unique([e.name for e in entries])
    device = loading.pick_device(settings.device)
    dtype = loading.pick_dtype(settings.dtype, device)
    classifiers = [
        _build_classifier(settings, e, device, dtype)
        for e in entries
        if e.kind in {"classify", "classify-adapter"}
    ]
    generator = _build_generator(settings, entries, device, dtype)
    engine = Engine(generator, classifiers)
    _prepare_rollouts(engine, settings, entries, device, dtype)
    return engine


def _prepare_rollouts(
    engine: Engine, settings: ServeSettings, entries: list[ModelRef], device: str, dtype
) -> None:
    """What canaries and alias following need: the refs served, their registry versions,
    and a loader for challengers (honed.serve.engine.rollout)."""
    engine.refs = {e.name: e.ref for e in entries if e.kind != "generate"}
    engine.alias_poll_s = settings.alias_poll_seconds
    engine.request_timeout_s = settings.request_timeout_s
    for e in entries:
        if e.kind == "adapter":
            engine.traffic.versions[e.name] = e.version

    def load(name: str, ref: str) -> ClassifierModel:
        entry = loading.parse_entry(f"{name}={ref}")
        if entry.kind not in {"classify", "classify-adapter"}:
            raise ModelError(f"{ref!r} holds a {entry.kind} model, not a classifier")
        return _build_classifier(settings, entry, device, dtype)

    engine.loader = load


def _build_classifier(settings: ServeSettings, entry: ModelRef, device: str, dtype):
    """In this process, or (``classify_processes`` > 0) in that many worker processes."""
    if settings.classify_processes:
        from honed.serve.engine.classify_procs import ClassifierProcesses, WorkerSpec

        spec = WorkerSpec(entry, settings, device, str(dtype).removeprefix("torch."))
        procs = ClassifierProcesses(spec, settings.classify_processes)
        return loading.stamp(ClassifierModel.in_processes(entry.name, procs, settings), entry)
    model = loading.load_classifier(
        entry, device, dtype, settings.classify_quantization, settings.classify_packing
    )
    return loading.stamp(
        ClassifierModel(entry.name, *model, settings=settings, device=device), entry
    )


def _check_unique(names: list[str]) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ModelError(f"two models share the id {sorted(seen)[0]!r}; name them NAME=REF")


def _base_entry(settings: ServeSettings, entries: list[ModelRef]) -> ModelRef | None:
    bases = [e for e in entries if e.kind == "generate"]
    adapters = [e for e in entries if e.kind == "adapter"]
    if len(bases) > 1:
        raise ModelError("one generative base per server: got " + ", ".join(e.ref for e in bases))
    if settings.base:
        path, version = loading.resolve(settings.base)
        if loading.detect_kind(path) != "generate":
            raise ModelError(f"base {settings.base!r} is not a causal language model")
        if bases and bases[0].path != path:
            raise ModelError(f"--base {settings.base!r} and model {bases[0].ref!r} differ")
        name = (
            settings.base.removeprefix("packaged:")
            if settings.base.startswith("packaged:")
            else path.name
        )
        return ModelRef(name, settings.base, path, "generate", version)
    if bases:
        return bases[0]
    if adapters:
        ref = loading.adapter_base_ref(adapters[0].path)
        path, version = loading.resolve(ref)
        return ModelRef(path.name, ref, path, "generate", version)
    return None


def _build_generator(
    settings, entries: list[ModelRef], device: str, dtype
) -> GenerativeModel | None:
    base = _base_entry(settings, entries)
    if base is None:
        return None
    adapters = [e for e in entries if e.kind == "adapter"]
    if settings.merge_adapter and len(adapters) != 1:
        raise ModelError(f"merge_adapter needs exactly one adapter, got {len(adapters)}")
    model = loading.load_causal_lm(base.path, device, dtype)
    tokenizer = loading.load_tokenizer(base.path, "left")
    name = settings.base_name or base.name
    base_digest = _check_lineage(base, adapters)
    if settings.merge_adapter:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(model, str(adapters[0].path)).merge_and_unload()
        gen = GenerativeModel(name, merged.eval(), tokenizer, settings, device, adapters[0].name)
        return loading.stamp(gen, adapters[0])  # the merged adapter's version answers
    gen = GenerativeModel(name, model, tokenizer, settings, device, base_digest=base_digest)
    loading.stamp(gen, base, base_digest)
    for i, a in enumerate(adapters):
        gen._attach(a.path, f"honed_init_{i}")
        digest = loading.adapter_digest(a.path)
        gen.adapters[a.name] = AdapterSlot(f"honed_init_{i}", a.ref, digest, a.version)
    return gen


def _check_lineage(base: ModelRef, adapters: list[ModelRef]) -> str | None:
    """Refuse an adapter whose lineage names a different base digest."""
    wanted = {a.name: d for a in adapters if (d := loading.base_digest_of(a.path))}
    if not wanted:
        return None
    digest = loading.folder_digest(base.path)
    for name, d in wanted.items():
        if d != digest:
            raise ModelError(f"adapter {name!r} was trained on another base than {base.ref!r}")
    return digest
