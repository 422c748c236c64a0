"""Replay experiments for the drift demo and benchmark: in-domain financial headlines
(Financial PhraseBank) as reference and stream, off-domain text mixed into shifted windows.

Used by ``examples/drift_demo.py`` (``make demo-drift``) and ``bench/drift_detection.py``,
which say where the data sets are (``--data-dir``; default: the repository's ``data/`` and
``../shared/data``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honed.errors import DataError
from honed.evals.profile import ProfileConfig, ReferenceProfile, build_reference_profile
from honed.monitor.drift import ALERT, DriftConfig, DriftReport, check_drift

PHRASEBANK = Path("financial_phrasebank/Sentences_AllAgree.txt")
ALPACA = Path("alpaca/alpaca_2000.json")  # the repo copy, data/alpaca/
INJECTIONS = Path("security/prompt_injection/prompt_injections.jsonl")


def add_data_dir_option(parser: argparse.ArgumentParser, repo: Path) -> None:
    """The scripts' repeatable ``--data-dir``; default: ``repo/data`` and ``repo/../shared/data``
    (the bundled copies, then the shared data sets beside the checkout)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        default=None,
        help="Folder holding financial_phrasebank/, alpaca/ and security/ (repeatable); "
        "default: data/ and ../shared/data next to this repository.",
    )
    parser.set_defaults(default_data_dirs=(repo / "data", repo.parent / "shared" / "data"))


def data_dirs_of(args: argparse.Namespace) -> Sequence[Path]:
    """The folders ``add_data_dir_option`` parsed: the given ones, else its defaults."""
    return args.data_dir or args.default_data_dirs


def find_data(relative: Path, data_dirs: Sequence[Path]) -> Path:
    """``<dir>/<relative>`` in the first of ``data_dirs`` that holds it (the caller says where
    the data sets are: a script passes its repository's ``data/`` folder, or ``--data-dir``)."""
    if not data_dirs:
        raise DataError(f"{relative}: no data folder given to look for it in (--data-dir)")
    for base in map(Path, data_dirs):
        if (base / relative).is_file():
            return base / relative
    tried = ", ".join(str(Path(d)) for d in data_dirs)
    raise DataError(f"{relative}: not found under {tried}; pass the folder holding it (--data-dir)")


def load_phrasebank(
    path: Path | None = None, data_dirs: Sequence[Path] = ()
) -> tuple[list[str], list[str]]:
    """Sentences and labels of ``sentence@label`` lines (ISO-8859-1)."""
    path = path or find_data(PHRASEBANK, data_dirs)
    texts, labels = [], []
    for line in path.read_text(encoding="iso-8859-1").splitlines():
        if "@" in line:
            text, label = line.rsplit("@", 1)
            texts.append(text.strip())
            labels.append(label.strip())
    return texts, labels


def load_alpaca(
    path: Path | None = None, limit: int = 2000, data_dirs: Sequence[Path] = ()
) -> list[str]:
    """Alpaca instructions (with their input when there is one): off-domain requests."""
    rows = json.loads((path or find_data(ALPACA, data_dirs)).read_text(encoding="utf-8"))
    out = [(r["instruction"] + ("\n" + r["input"] if r.get("input") else "")) for r in rows]
    return out[:limit]


def load_german(path: Path | None = None, data_dirs: Sequence[Path] = ()) -> list[str]:
    """German texts of the prompt-injection set (stopword guess): another language."""
    from honed.evals.textstats import guess_language

    lines = (path or find_data(INJECTIONS, data_dirs)).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    return [t for t in texts if guess_language(t) == "de"]


def cached_embeddings(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]):
    """Embeddings (n, d) from the state cache, computed once per distinct text list."""
    from honed.state import cache_dir

    key = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:24]
    path = cache_dir("embeddings") / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    emb = np.asarray(encode(list(texts)), dtype=np.float32)
    np.save(path, emb)
    return emb


@dataclass
class Corpus:
    """Texts and their embeddings (n, d), aligned."""

    texts: list[str]
    emb: np.ndarray

    def take(self, idx: np.ndarray) -> Corpus:
        return Corpus([self.texts[i] for i in idx], self.emb[idx])


@dataclass
class Trial:
    in_domain: list[DriftReport]
    shifted: list[DriftReport]

    @property
    def false_alarms(self) -> int:
        return sum(r.status == ALERT for r in self.in_domain)

    @property
    def detections(self) -> int:
        return sum(r.status == ALERT for r in self.shifted)


def run_trial(
    domain: Corpus,
    off: Corpus,
    seed: int,
    *,
    window: int = 200,
    n_in_domain: int = 10,
    n_shifted: int = 1,
    mix: float = 0.3,
    reference_size: int = 1200,
    drift_config: DriftConfig | None = None,
) -> Trial:
    """Reference from ``reference_size`` in-domain texts; ``n_in_domain`` windows drawn from
    the held-out in-domain texts; ``n_shifted`` windows with ``mix`` off-domain texts."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(domain.texts))
    ref, pool = domain.take(order[:reference_size]), domain.take(order[reference_size:])
    profile = build_reference_profile(
        ref.texts, embeddings=ref.emb, config=ProfileConfig(seed=seed)
    )
    cfg = drift_config or DriftConfig(seed=seed)
    in_domain = [
        _check(profile, pool.take(rng.choice(len(pool.texts), window, replace=False)), cfg)
        for _ in range(n_in_domain)
    ]
    n_off = round(window * mix)
    shifted = []
    for _ in range(n_shifted):
        part_in = pool.take(rng.choice(len(pool.texts), window - n_off, replace=False))
        part_off = off.take(rng.choice(len(off.texts), n_off, replace=False))
        mixed = Corpus(part_in.texts + part_off.texts, np.concatenate([part_in.emb, part_off.emb]))
        shifted.append(_check(profile, mixed, cfg))
    return Trial(in_domain, shifted)


def _check(profile: ReferenceProfile, window: Corpus, cfg: DriftConfig) -> DriftReport:
    return check_drift(profile, window.texts, embeddings=window.emb, config=cfg)
