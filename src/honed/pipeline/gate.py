"""Gate a challenger against the champion: the same frozen set, both models, one run.

``gate_challenger(name, challenger, champion=None, cfg)`` resolves both references (registry
refs or folders), predicts both models on the champion's frozen evaluation set, decides with
``honed.evals.gate`` and writes the decision with all its evidence as JSON (gate.json).
No champion (the first model of a name): only the spec's metric floors apply.
"""

from __future__ import annotations

from pathlib import Path

from honed.evals.config import GateConfig
from honed.evals.gate import GateDecision, check
from honed.evals.gate_run import describe, gate_folders, gate_settings, record_decision
from honed.registry.config import RegistryConfig
from honed.registry.store import Registry, parse_ref, resolve_ref

__all__ = ["GateDecision", "describe", "gate_challenger"]


def _resolve(ref: str, registry_cfg: RegistryConfig | None) -> tuple[Path, str]:
    """(folder, label): the label is the registry version ("fin/3") or the folder path."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    parsed = parse_ref(ref)
    version = Registry(registry_cfg).get_version(parsed)
    folder = resolve_ref(f"{version.name}/{version.version}", registry_cfg)
    return folder, f"{version.name}/{version.version}"


def _champion(
    name: str, champion: str | None, registry_cfg: RegistryConfig | None
) -> tuple[Path | None, str | None]:
    if champion is not None:
        return _resolve(champion, registry_cfg)
    registry = Registry(registry_cfg)
    if not registry.versions(name) or registry.alias_holder(name, "champion") is None:
        return None, None  # the first model of this name
    return _resolve(f"{name}@champion", registry_cfg)


def gate_challenger(
    name: str,
    challenger: str,
    champion: str | None = None,
    cfg: GateConfig | None = None,
    registry_cfg: RegistryConfig | None = None,
    *,
    floors: dict[str, float] | None = None,
    output: Path | None = None,
) -> GateDecision:
    """Decide whether `challenger` may replace `champion` (None: NAME@champion, if any).

    cfg None: the challenger spec's ``eval.gate`` (defaults when absent); floors None: its
    ``eval.min_metrics``. The decision is written to `output` (default under
    ``$HONED_HOME/gates/NAME/``); ``decision.evidence["path"]`` says where.
    """
    new_folder, new_label = _resolve(challenger, registry_cfg)
    old_folder, old_label = _champion(name, champion, registry_cfg)
    spec_cfg, spec_floors = gate_settings(new_folder)
    cfg = cfg or spec_cfg
    if cfg.enabled:
        from honed.train.tasks.grpo import load_reward_scorer  # reward_model graders (grpo)

        floors = spec_floors if floors is None else floors
        decision = gate_folders(new_folder, old_folder, cfg, floors, load_reward_scorer)
    else:
        detail = "eval.gate.enabled is false: nothing compared"
        decision = GateDecision(True, [check("gate disabled", True, None, None, detail)], {})
    record_decision(decision, name, new_label, old_label, output)
    return decision
