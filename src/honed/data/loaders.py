"""Read raw records from jsonl, json, csv, parquet, PhraseBank and Hugging Face datasets.

Every loader yields ``Record``s: the row's fields plus where it came from (file and line), so a
bad row can be reported precisely. Rows that cannot even be parsed (undecodable bytes, broken
JSON, a PhraseBank line without '@') come back as ``BadRow``s rather than raising, and the
caller applies the spec's skip/fail policy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.data.config import DataConfig
from honed.errors import DataError

_EXT_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "phrasebank",
}


@dataclass
class Record:
    fields: dict[str, Any]
    file: str
    line: int


@dataclass
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class RawData:
    records: list[Record] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    sha256: str = ""  # of the source bytes (or the HF dataset fingerprint)


def detect_format(source: str, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    path = Path(source)
    if path.is_dir():
        return "hf"
    fmt = _EXT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{source}: cannot tell the format from the extension {path.suffix!r}; "
            f"set data.format to one of jsonl, json, csv, parquet, phrasebank, hf"
        )
    return fmt


def _decoded_lines(raw: bytes, name: str, encoding: str) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text or None when the line's bytes do not decode)."""
    for number, chunk in enumerate(raw.splitlines(), start=1):
        try:
            yield number, chunk.decode(encoding)
        except UnicodeDecodeError:
            yield number, None


def _bad_encoding(name: str, line: int, encoding: str) -> BadRow:
    return BadRow(name, line, f"undecodable bytes (not valid {encoding})")


def _load_jsonl(raw: bytes, name: str, cfg: DataConfig, out: RawData) -> None:
    for line, text in _decoded_lines(raw, name, cfg.encoding):
        if text is None:
            out.bad_rows.append(_bad_encoding(name, line, cfg.encoding))
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            out.bad_rows.append(BadRow(name, line, f"broken JSON ({err.msg})"))
            continue
        if not isinstance(row, dict):
            out.bad_rows.append(BadRow(name, line, "a JSON line must be an object"))
            continue
        out.records.append(Record(row, name, line))


def _load_json(raw: bytes, name: str, cfg: DataConfig, out: RawData) -> None:
    try:
        rows = json.loads(raw.decode(cfg.encoding))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{name}: not a valid JSON document ({err})") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataError(f"{name}: expected a JSON array of objects")
    for index, row in enumerate(rows, start=1):
        if isinstance(row, dict):
            out.records.append(Record(row, name, index))
        else:
            out.bad_rows.append(BadRow(name, index, "array item is not an object"))


def _load_csv(raw: bytes, name: str, cfg: DataConfig, out: RawData) -> None:
    good: list[str] = []
    line_of: list[int] = []  # physical line of each kept line
    for line, text in _decoded_lines(raw, name, cfg.encoding):
        if text is None:
            out.bad_rows.append(_bad_encoding(name, line, cfg.encoding))
        else:
            good.append(text)
            line_of.append(line)
    delimiter = "\t" if name.lower().endswith(".tsv") else ","
    reader = csv.DictReader(io.StringIO("\n".join(good)), delimiter=delimiter)
    for row in reader:
        # reader.line_num counts lines consumed so far (1-based, header included).
        line = line_of[min(reader.line_num, len(line_of)) - 1]
        if None in row:
            out.bad_rows.append(BadRow(name, line, "more values than header columns"))
            continue
        out.records.append(Record(dict(row), name, line))


def _load_phrasebank(raw: bytes, name: str, cfg: DataConfig, out: RawData) -> None:
    """Financial PhraseBank: ``sentence@label`` per line; the label follows the last '@'."""
    for line, text in _decoded_lines(raw, name, cfg.encoding):
        if text is None:
            out.bad_rows.append(_bad_encoding(name, line, cfg.encoding))
            continue
        if not text.strip():
            continue
        sentence, sep, label = text.rpartition("@")
        if not sep:
            out.bad_rows.append(BadRow(name, line, "no '@label' at the end of the line"))
            continue
        out.records.append(
            Record({cfg.text_field: sentence.strip(), cfg.label_field: label.strip()}, name, line)
        )


def _load_parquet(path: Path, cfg: DataConfig, out: RawData) -> None:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several error types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({err})") from None
    for index, row in enumerate(frame.to_dict(orient="records"), start=1):
        out.records.append(Record(row, str(path), index))


def _load_hf(source: str, cfg: DataConfig, out: RawData) -> None:
    import datasets

    try:
        if Path(source).is_dir():
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(source, split=cfg.hf_split)
    except Exception as err:  # hub, network and format errors alike end here
        raise DataError(f"{source}: cannot load Hugging Face dataset ({err})") from None
    out.sha256 = hashlib.sha256(ds._fingerprint.encode()).hexdigest()
    for index, row in enumerate(ds, start=1):
        out.records.append(Record(dict(row), source, index))


_BYTE_LOADERS = {
    "jsonl": _load_jsonl,
    "json": _load_json,
    "csv": _load_csv,
    "phrasebank": _load_phrasebank,
}


def _read_bytes(source: str, limit: int | None = None) -> bytes:
    """The file's bytes (at most ``limit``); a missing or unreadable file is a DataError."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: data file not found")
    if not path.is_file():
        raise DataError(f"{source}: not a file")
    try:
        with path.open("rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    except OSError as err:
        raise DataError(f"{source}: cannot read ({err.strerror or err})") from None


def load_raw(source: str, cfg: DataConfig) -> RawData:
    """Read every row of the source; never raises for a single bad row."""
    fmt = detect_format(source, cfg)
    out = RawData()
    if fmt == "hf":
        _load_hf(source, cfg, out)
        return _truncate(out, cfg)
    path = Path(source)
    raw = _read_bytes(source)
    out.sha256 = hashlib.sha256(raw).hexdigest()
    if fmt == "parquet":
        _load_parquet(path, cfg, out)
    else:
        _BYTE_LOADERS[fmt](raw, str(path), cfg, out)
    return _truncate(out, cfg)


def _truncate(out: RawData, cfg: DataConfig) -> RawData:
    if cfg.max_rows is not None:
        out.records = out.records[: cfg.max_rows]
    return out


#: Bounds of ``sample_raw``: enough rows to check fields, few enough to stay instant on big files.
SAMPLE_ROWS = 200
SAMPLE_BYTES = 1 << 20


def _json_prefix(raw: bytes, name: str, cfg: DataConfig, out: RawData) -> None:
    """Objects at the start of a top-level JSON array cut short (a big file's first bytes)."""
    text = raw.decode(cfg.encoding, errors="ignore").lstrip()
    if not text.startswith("["):
        raise DataError(f"{name}: too big to check whole; expected a JSON array of objects")
    decoder, pos = json.JSONDecoder(), 1
    while len(out.records) + len(out.bad_rows) < SAMPLE_ROWS:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut, or the end of the array
        index = len(out.records) + len(out.bad_rows) + 1
        if isinstance(row, dict):
            out.records.append(Record(row, name, index))
        else:
            out.bad_rows.append(BadRow(name, index, "array item is not an object"))


def _sample_parquet(path: Path, out: RawData) -> None:
    import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=SAMPLE_ROWS), None)
    except Exception as err:  # pyarrow raises several error types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({err})") from None
    rows = batch.to_pylist() if batch is not None else []
    out.records += [Record(row, str(path), i) for i, row in enumerate(rows, start=1)]


def _sample_hf(source: str, cfg: DataConfig, out: RawData) -> None:
    import datasets

    try:
        if Path(source).is_dir():
            ds = datasets.load_from_disk(source)  # memory-mapped: selecting rows is cheap
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
            rows = ds.select(range(min(SAMPLE_ROWS, len(ds))))
        else:
            # The same download and cache as the full read; only the first rows are decoded.
            rows = datasets.load_dataset(source, split=f"{cfg.hf_split}[:{SAMPLE_ROWS}]")
        out.records += [Record(dict(r), source, i) for i, r in enumerate(rows, start=1)]
    except Exception as err:  # hub, network and format errors alike end here
        raise DataError(f"{source}: cannot load Hugging Face dataset ({err})") from None


def sample_raw(source: str, cfg: DataConfig) -> RawData:
    """The first rows of the source (at most SAMPLE_ROWS, read from at most SAMPLE_BYTES of a
    text file), parsed by the same loaders as ``load_raw``: a quick check that the file exists,
    can be read in the configured format and encoding, and has the expected fields."""
    fmt = detect_format(source, cfg)
    out = RawData()
    if fmt == "hf":
        _sample_hf(source, cfg, out)
    elif fmt == "parquet":
        _read_bytes(source, limit=4)  # exists and is readable
        _sample_parquet(Path(source), out)
    else:
        raw = _read_bytes(source, limit=SAMPLE_BYTES + 1)
        if len(raw) <= SAMPLE_BYTES:  # the whole file
            _BYTE_LOADERS[fmt](raw, source, cfg, out)
        elif fmt == "json":
            _json_prefix(raw, source, cfg, out)
        else:  # whole lines only: the last one may be cut mid-row
            _BYTE_LOADERS[fmt](raw[: raw.rfind(b"\n") + 1], source, cfg, out)
    if len(out.records) > SAMPLE_ROWS:  # bad rows past the last kept record are not sampled
        out.records = out.records[:SAMPLE_ROWS]
        out.bad_rows = [b for b in out.bad_rows if b.line <= out.records[-1].line]
    return out
