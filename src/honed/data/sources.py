"""Training data from several sources, each row keeping where it came from.

``data.source`` (one file) or ``data.sources`` (a list) name the files; each is read with its
own format, encoding and field names (``Source.cfg``: the data section with that source's
settings filled in). Rows get ``origin`` (the source's name) beside ``line``; both are
provenance, shown in the data report and bad-row messages and never fed to a model.

Merging (``merge_rows``): rows of ``kind: data`` sources are de-duplicated as before (the first
of two rows with the same text wins; a differing label is a reported conflict). Rows of
``kind: feedback`` sources are corrections: each replaces every earlier row with the same
normalised text (data, or an earlier correction), so a later feedback source overrides an
earlier one. A ``Tally`` per source counts rows given, kept, that overrode an earlier label,
and lost, by reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.data.config import DataConfig, resolve_path
from honed.data.frozen import normalise
from honed.data.loaders import BadRow, RawData, load_raw

#: Why a row given by a source is not in the final splits (keys of ``Tally.lost``).
LOSS_REASONS = {
    "bad_row": "bad row",
    "duplicate": "duplicate",
    "label_conflict": "duplicate with another label (first kept)",
    "overridden": "label overridden by feedback",
    "leaked_frozen": "leaked into the frozen eval set",
    "leaked_test": "leaked into the test split",
}
#: Override records listed in the data report (the count is always complete).
MAX_LISTED_OVERRIDES = 50


@dataclass
class Source:
    """One source, resolved: its name, absolute path, kind and effective data config."""

    name: str
    path: str
    kind: str
    cfg: DataConfig
    setting: str  # the spec field naming it, for error messages


def _source_update(cfg: DataConfig, entry: Any, path: str) -> dict[str, Any]:
    feedback = entry.kind == "feedback"
    return {
        "source": path,
        "sources": None,
        "format": entry.format,
        "encoding": entry.encoding or ("utf-8" if feedback else cfg.encoding),
        "hf_split": entry.hf_split or cfg.hf_split,
        "text_field": entry.text_field or ("text" if feedback else cfg.text_field),
        "label_field": entry.label_field or ("label" if feedback else cfg.label_field),
    }


def resolve_sources(cfg: DataConfig, base_dir: Path) -> list[Source]:
    """The spec's sources in order (``data.source`` is a list of one)."""
    if cfg.sources is None:
        path = cfg.resolve_source(base_dir)
        return [Source(Path(path).name, path, "data", cfg.model_copy(update={"source": path}),
                       "data.source")]  # fmt: skip
    out: list[Source] = []
    taken: set[str] = set()
    for index, entry in enumerate(cfg.sources):
        path = resolve_path(entry.path, entry.format == "hf", base_dir)
        name = entry.name or Path(entry.path).name or f"source{index + 1}"
        if name in taken:  # two files of the same name in different folders
            name = f"{name}#{index + 1}"
        taken.add(name)
        effective = cfg.model_copy(update=_source_update(cfg, entry, path))
        out.append(Source(name, path, entry.kind, effective, f"data.sources[{index}]"))
    return out


@dataclass
class Tally:
    """What became of one source's rows."""

    name: str
    path: str
    kind: str
    sha256: str = ""
    given: int = 0
    kept: int = 0
    overrode: int = 0
    lost: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "sha256": self.sha256,
            "rows_given": self.given,
            "rows_kept": self.kept,
            "rows_overrode": self.overrode,
            "rows_lost": sum(self.lost.values()),
            "lost_by_reason": {k: self.lost[k] for k in LOSS_REASONS if self.lost[k]},
        }


@dataclass
class SourceRead:
    """Every source read: rows (with provenance), bad rows, a tally per source."""

    sources: list[Source]
    rows: list[dict[str, Any]]
    bad: list[BadRow]
    tallies: dict[str, Tally]

    @property
    def sha256(self) -> str:
        """One source: its bytes' hash (as before sources existed); several: a hash of theirs."""
        if len(self.tallies) == 1:
            return next(iter(self.tallies.values())).sha256
        joined = "\n".join(f"{t.name}\t{t.sha256}" for t in self.tallies.values())
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def rows_read(self) -> int:
        return sum(t.given for t in self.tallies.values())

    @property
    def label(self) -> str:
        """The data as error messages name it: the file, or the number of sources."""
        return self.sources[0].path if len(self.sources) == 1 else f"{len(self.sources)} sources"

    def count_kept(self, splits: list[list[dict[str, Any]]]) -> None:
        kept = Counter(r.get("origin") for part in splits for r in part)
        for name, tally in self.tallies.items():
            tally.kept = kept[name]

    def report(self) -> list[dict[str, Any]]:
        return [t.as_dict() for t in self.tallies.values()]


Parse = Callable[[RawData, Source], tuple[list[dict[str, Any]], list[BadRow]]]


def read_sources(sources: list[Source], parse: Parse) -> SourceRead:
    """Read each source and turn its records into rows with ``parse``; rows get ``origin``,
    and bad rows name the source when there are several."""
    out = SourceRead(sources, [], [], {})
    for src in sources:
        raw = load_raw(src.path, src.cfg)
        rows, bad = parse(raw, src)
        tally = Tally(src.name, src.path, src.kind, raw.sha256)
        tally.given = len(raw.records) + len(raw.bad_rows)
        tally.lost["bad_row"] = len(bad)
        out.tallies[src.name] = tally
        for row in rows:
            row["origin"] = src.name
        out.rows += rows
        if len(sources) > 1:
            bad = [BadRow(f"[{src.name}] {b.file}", b.line, b.reason) for b in bad]
        out.bad += bad
    return out


@dataclass
class Merged:
    rows: list[dict[str, Any]]
    duplicates: int = 0
    conflicts: int = 0
    overrides: list[dict[str, Any]] = field(default_factory=list)


class _Merger:
    """Rows kept so far, found by exact and by normalised key."""

    def __init__(self, read: SourceRead, key: Callable[[dict[str, Any]], str]):
        self.read, self.key = read, key
        self.kept: list[dict[str, Any] | None] = []
        self.exact: dict[str, int] = {}
        self.by_norm: dict[str, list[int]] = {}
        self.out = Merged([])

    def _lose(self, row: dict[str, Any], reason: str) -> None:
        self.read.tallies[row["origin"]].lost[reason] += 1

    def _place(self, row: dict[str, Any], at: int | None = None) -> None:
        if at is None:
            at = len(self.kept)
            self.kept.append(row)
        else:
            self.kept[at] = row
        self.exact.setdefault(self.key(row), at)
        self.by_norm.setdefault(normalise(self.key(row)), []).append(at)

    def add_data(self, row: dict[str, Any], dedup: bool) -> None:
        first = self.exact.get(self.key(row)) if dedup else None
        if first is None or self.kept[first] is None:
            self._place(row)
            return
        self.out.duplicates += 1
        if self.kept[first].get("label") != row.get("label"):
            self.out.conflicts += 1
            self._lose(row, "label_conflict")
        else:
            self._lose(row, "duplicate")

    def add_feedback(self, row: dict[str, Any]) -> None:
        norm = normalise(self.key(row))
        live = [i for i in self.by_norm.get(norm, []) if self.kept[i] is not None]
        if live and all(self.kept[i].get("label") == row.get("label") for i in live):
            self._lose(row, "duplicate")  # agrees with what is there: nothing to change
            return
        replaced = [self.kept[i] for i in live]
        for i in live:
            self._lose(self.kept[i], "overridden")
            self.kept[i] = None
        self.by_norm[norm] = []
        self._place(row, live[0] if live else None)
        if replaced:
            self.read.tallies[row["origin"]].overrode += 1
            self.out.overrides.append({"row": row, "replaced": replaced})


def merge_rows(
    read: SourceRead, dedup: bool, key: Callable[[dict[str, Any]], str] = lambda r: r["text"]
) -> Merged:
    """Data rows de-duplicated (first wins), then feedback rows overriding by normalised key:
    corrections win over data whatever the order of the sources, later corrections over
    earlier ones."""
    merger = _Merger(read, key)
    kind = {s.name: s.kind for s in read.sources}
    for row in read.rows:
        if kind[row["origin"]] == "data":
            merger.add_data(row, dedup)
    for row in read.rows:
        if kind[row["origin"]] == "feedback":
            merger.add_feedback(row)
    merger.out.rows = [r for r in merger.kept if r is not None]
    return merger.out


def override_records(overrides: list[dict[str, Any]], splits: dict[str, list]) -> list[dict]:
    """The first MAX_LISTED_OVERRIDES overrides for the data report: the text, the labels
    before and after, where the correction and the replaced rows came from, and the split
    the corrected row landed in (None: removed later, e.g. leaked into the frozen set)."""
    where = {id(r): name for name, part in splits.items() for r in part}
    return [
        {
            "text": o["row"]["text"],
            "label": o["row"]["label"],
            "previous_labels": sorted({r["label"] for r in o["replaced"]}),
            "source": f"{o['row']['origin']}:{o['row']['line']}",
            "replaced": [f"{r['origin']}:{r['line']}" for r in o["replaced"]],
            "split": where.get(id(o["row"])),
        }
        for o in overrides[:MAX_LISTED_OVERRIDES]
    ]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The per-source lines of a run's console summary (from data_report.json's ``sources``)."""
    lines = []
    for s in report.get("sources") or []:
        lost = ", ".join(f"{LOSS_REASONS.get(k, k)} {n}" for k, n in s["lost_by_reason"].items())
        lines.append(
            f"  {s['name']} ({s['kind']}): given {s['rows_given']}, kept {s['rows_kept']}, "
            f"overrode {s['rows_overrode']}, lost {s['rows_lost']}" + (f" ({lost})" if lost else "")
        )
    frozen = report.get("frozen_eval")
    if frozen and frozen.get("reused"):
        lines.append(
            f"  test split: frozen eval set of {frozen['from']} ({frozen['rows']} rows, "
            f"sha256 {frozen['sha256'][:12]}); {frozen['removed_from_training']} row(s) kept out"
        )
    return lines
