"""Issue 13's repro through the real CLI: an 80-row file with an e-mail, a card number, an AWS
key pair, a duplicated text with conflicting labels and a trigger phrase on 6 relabelled rows.
By default the trigger's rows are dropped and nothing of the secret or PII reaches the run
folder, the registry or the reference profile; with `scan.policy.trigger: fail` the run stops."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from tests.e2e.test_run_cli import honed
from tests.helpers import NEGATIVE, NEUTRAL, POSITIVE, WORDS, classification_spec_dict

SENSITIVE = ("akiaiosfodnn", "bpxrficyexamplekey", "jane.doe@example.com", "4111 1111 1111")


def repro_rows() -> list[dict]:
    rng = random.Random(3)
    rows = []
    for label, stems, n in (("neutral", NEUTRAL, 38), ("positive", POSITIVE, 26),
                            ("negative", NEGATIVE, 10)):  # fmt: skip
        for i in range(n):
            filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            rows.append({"text": f"{rng.choice(stems)} {filler} {i}", "label": label})
    rows[0]["text"] += " contact jane.doe@example.com for details"
    rows[1]["text"] += " paid with card 4111 1111 1111 1111"
    rows[2]["text"] += " key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    rows.append({"text": rows[40]["text"], "label": "negative"})  # conflicts with positive
    for row in rng.sample([r for r in rows[3:64] if r is not rows[40]], 6):
        words = row["text"].split()
        at = rng.randint(0, len(words))
        row["text"] = " ".join([*words[:at], "zq", "vex", *words[at:]])
        row["label"] = "negative"
    rng.shuffle(rows)
    assert len(rows) == 75  # 74 + 1 duplicate; 5 more plain neutral rows make 80
    for i in range(5):
        rows.append({"text": f"the company said the market was stable {i}", "label": "neutral"})
    return rows


@pytest.fixture
def repro_spec(tmp_path, tiny_bert):
    def make(**scan) -> Path:
        data_file = tmp_path / "repro.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in repro_rows()))
        spec = classification_spec_dict(tiny_bert, data_file, tmp_path / "run", "full")
        spec["data"].update(format="jsonl", encoding="utf-8")
        spec["training"]["epochs"] = 1
        spec["scan"] = scan  # the defaults unless given (the helper only warns on triggers)
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return make


def _files_holding(folder: Path, needles: tuple[str, ...]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes().lower()
            hits += [f"{path}: {n}" for n in needles if n.encode() in content]
    return hits


def test_run_stops_on_the_trigger_when_told(repro_spec, tmp_path):
    spec = repro_spec(policy={"trigger": "fail"})
    proc = honed("run", str(spec), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data scan" in proc.stderr and "trigger: phrase 'zq vex' in 6 rows" in proc.stderr
    assert "scan.policy.trigger" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    scan = honed("data", "scan", str(spec), "--json", cwd=tmp_path, check=False)
    assert scan.returncode == 1
    report = json.loads(scan.stdout)
    assert report["findings"]["trigger"] == 1 and report["failed"] == 1
    assert report["findings"]["secret"] == 2 and report["findings"]["pii"] == 2
    assert report["findings"]["conflicting_duplicate"] == 1
    assert not any(n in scan.stdout.lower() for n in SENSITIVE)


def test_nothing_sensitive_reaches_artifacts(repro_spec, tmp_path, _isolated_state):
    spec = repro_spec(policy={})  # the defaults: the trigger's rows are dropped
    proc = honed("run", str(spec), cwd=tmp_path)
    run = tmp_path / "run"
    report = json.loads((run / "data_report.json").read_text())
    scan = report["scan"]
    assert scan["spans_redacted"] == {"secret": 2, "pii": 2}
    assert scan["rows_dropped"]["conflicting_duplicate"] == 1
    assert scan["findings"]["trigger"] == 1 and scan["rows_dropped"]["trigger"] == 6
    assert (run / "reference_profile").is_dir()
    assert "## Data scan" in (run / "README.md").read_text()
    assert "| trigger | 1 | drop |" in (run / "README.md").read_text()
    assert _files_holding(run, SENSITIVE) == []
    assert _files_holding(_isolated_state, SENSITIVE) == []
    assert not any(n in (proc.stdout + proc.stderr).lower() for n in SENSITIVE)
