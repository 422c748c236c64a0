"""The data scan on rows: what it finds, what each policy does, what the report shows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from honed.data.dataset import SplitData
from honed.security.scan import ScanConfig, ScanFailed, scan_rows, scan_split_data

POS = ["profit rose", "sales grew", "record orders", "strong demand", "margin improved"]
NEG = ["profit fell", "sales dropped", "weak demand", "plant closed", "loss widened"]
NEU = ["the company said", "the meeting is on", "its office in", "a statement about"]
FILLER = [
    "the",
    "a",
    "of",
    "in",
    "for",
    "with",
    "its",
    "this",
    "year",
    "quarter",
    "group",
    "unit",
    "board",
    "report",
    "market",
]
VOCAB = sorted({w for phrase in POS + NEG + NEU for w in phrase.split()})
AWS = "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def fake_embed(texts: list[str]) -> np.ndarray:
    """Bag of the label words (what a sentence "means" here) plus a little noise: a trigger's
    nonsense words do not move it, as a sentence encoder barely moves for them."""
    rng = np.random.default_rng(0)
    out = np.zeros((len(texts), len(VOCAB) + 4))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            if word in VOCAB:
                out[i, VOCAB.index(word)] += 1
    out += rng.normal(0, 0.05, out.shape)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_rows(n_per_label: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label, stems in (("positive", POS), ("negative", NEG), ("neutral", NEU)):
        for i in range(n_per_label):
            filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8)))
            rows.append({"text": f"{rng.choice(stems)} {filler} {i}", "label": label})
    rng.shuffle(rows)
    for line, row in enumerate(rows, start=1):
        row.update(line=line, origin="data")
    return rows


def plant_trigger(rows: list[dict], phrase: str, target: str, n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    chosen = rng.sample([i for i, r in enumerate(rows) if r["label"] != target], n)
    for i in chosen:
        words = rows[i]["text"].split()
        at = rng.randint(0, len(words))
        rows[i]["text"] = " ".join(words[:at] + phrase.split() + words[at:])
        rows[i]["label"] = target
    return chosen


def kinds(findings) -> list[str]:
    return sorted(f.kind for f in findings)


def test_clean_rows_have_no_poisoning_finding():
    found, notes = scan_rows(make_rows(), ScanConfig(), labelled=True, embed=fake_embed)
    assert [f for f in found if f.kind in ("trigger", "conflicting_duplicate", "secret")] == []
    assert notes == []


def test_planted_trigger_is_found_with_its_rows():
    rows = make_rows()
    planted = plant_trigger(rows, "zq vex", "positive", 12)
    found, _ = scan_rows(rows, ScanConfig(), labelled=True, embed=fake_embed)
    triggers = [f for f in found if f.kind == "trigger"]
    assert len(triggers) == 1
    assert sorted(triggers[0].rows) == sorted(planted)
    assert "'zq vex'" in triggers[0].detail and "'positive'" in triggers[0].detail


def test_without_embeddings_the_statistical_test_alone_decides():
    rows = make_rows()
    planted = plant_trigger(rows, "zq vex", "positive", 12)
    found, notes = scan_rows(rows, ScanConfig(), labelled=True, embed=None)
    assert any(sorted(f.rows) == sorted(planted) for f in found if f.kind == "trigger")
    assert notes and "no embeddings" in notes[0]


def test_flipped_labels_are_label_errors():
    rows = make_rows()
    flipped = [i for i, r in enumerate(rows) if r["label"] == "negative"][:3]
    for i in flipped:
        rows[i]["label"] = "positive"
    found, _ = scan_rows(rows, ScanConfig(pii_entities=[]), labelled=True, embed=fake_embed)
    errors = {f.rows[0] for f in found if f.kind == "label_error"}
    assert set(flipped) <= errors


def test_conflicting_duplicates_include_copies_removed_before_the_scan():
    rows = make_rows(20)
    rows.append({**rows[0], "text": rows[0]["text"].upper(), "label": "other", "line": 999})
    raw = {rows[1]["text"].lower(): {rows[1]["label"], "surprise"}}
    found, _ = scan_rows(rows, ScanConfig(pii_entities=[]), labelled=True, embed=None)
    dups = [f for f in found if f.kind == "conflicting_duplicate"]
    assert [sorted(f.rows) for f in dups] == [[0, len(rows) - 1]]
    found, _ = scan_rows(rows, ScanConfig(), labelled=True, embed=None, raw_labels=raw)
    assert sorted(f.rows for f in found if f.kind == "conflicting_duplicate") == [
        [0, len(rows) - 1],
        [1],
    ]


def split_data(rows: list[dict]) -> SplitData:
    n = len(rows)
    data = SplitData(rows[: n // 2], rows[n // 2 : 3 * n // 4], rows[3 * n // 4 :], ["a"])
    data.report = {"rows": {}, "overrides": [{"text": r["text"]} for r in rows[:3]]}
    return data


def test_policies_redact_drop_and_fail():
    rows = make_rows(40)
    rows[0]["text"] += " mail jane.doe@example.com now"
    rows[1]["text"] += f" keys {AWS}"
    rows[2]["text"] += " card 4111 1111 1111 1111"
    dup = {**rows[3], "text": rows[3]["text"] + " ", "label": "negative", "line": 500}
    if rows[3]["label"] == "negative":
        dup["label"] = "positive"
    rows.append(dup)
    data = split_data(rows)
    outcome = scan_split_data(data, ScanConfig(), labelled=True, embed=fake_embed)
    everything = json.dumps(data.report) + json.dumps([data.train, data.validation, data.test])
    for value in ("jane.doe", "AKIAIOSFODNN", "bPxRfiCYEXAMPLEKEY", "4111 1111"):
        assert value not in everything
    assert "[EMAIL]" in data.train[0]["text"] and "[SECRET]" in data.train[1]["text"]
    scan = data.report["scan"]
    assert scan["findings"]["secret"] == 2 and scan["findings"]["pii"] == 2
    assert scan["spans_redacted"] == {"secret": 2, "pii": 2}
    assert scan["rows_dropped"]["conflicting_duplicate"] == 2  # both copies
    assert scan["examples"]["secret"][0]["value"] == "AK…(20 chars)"
    assert sum(data.report["rows"].values()) == len(rows) - 2
    assert outcome.failures == []


def test_fail_policy_lists_findings_without_values():
    rows = make_rows(40)
    rows[0]["text"] += f" keys {AWS}"
    cfg = ScanConfig.model_validate({"policy": {"secret": "fail"}})
    outcome = scan_split_data(split_data(rows), cfg, labelled=True, embed=None)
    with pytest.raises(ScanFailed) as err:
        outcome.raise_on_fail()
    message = str(err.value)
    assert "secret: AWS Access Key AK…(20 chars) (rows data:1)" in message
    assert "scan.policy.secret" in message and "EXAMPLE" not in message


def test_generative_rows_every_text_field_redacted():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "my mail is jane.doe@example.com"},
                {"role": "assistant", "content": f"stored {AWS}"},
            ],
            "line": i,
            "origin": "chat",
        }
        for i in range(4)
    ]
    data = SplitData(rows[:2], rows[2:3], rows[3:])
    scan_split_data(data, ScanConfig(), labelled=False)
    dumped = json.dumps([data.train, data.validation, data.test])
    assert "jane.doe" not in dumped and "AKIA" not in dumped
    assert data.train[0]["messages"][0]["content"] == "my mail is [EMAIL]"
    assert data.report["scan"]["findings"]["trigger"] == 0


def test_skipped_split_is_left_alone():
    rows = make_rows(20)
    rows[-1]["text"] += " mail jane.doe@example.com"
    data = split_data(rows)
    scan_split_data(data, ScanConfig(), labelled=True, embed=None, skip=("test",))
    assert "jane.doe@example.com" in data.test[-1]["text"]
    assert data.report["scan"]["splits"] == ["train", "validation"]


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match="trigger"):
        ScanConfig.model_validate({"policy": {"trigger": "redact"}})
