from pathlib import Path

import pytest
import yaml

from honed.errors import SpecError
from honed.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL = {"name": "x", "model": {"base": "packaged:all-minilm-l6-v2"}, "data": {"source": "d.txt"}}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_yaml_parses(path):
    spec = load_spec(path)
    assert spec.name
    assert spec.path == path.resolve()


def test_examples_exist():
    assert any(p.name == "financial-sentiment.yaml" for p in EXAMPLES)


def test_defaults_fill_in():
    spec = parse_spec(MINIMAL)
    assert spec.task == "classification"
    assert spec.method.name == "lora"
    assert spec.data.split.seed == 42
    assert spec.registry.enabled


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_broken_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: x\nmodel:\n  base: [unclosed\n")
    with pytest.raises(SpecError, match=r"spec\.yaml.*line \d+.*broken YAML"):
        load_spec(path)


def test_unknown_field_is_named(tmp_path):
    data = {**MINIMAL, "training": {"epochz": 3}}
    path = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "training.epochz: unknown field" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_required_field_is_named():
    with pytest.raises(SpecError, match="data: required field is missing"):
        parse_spec({"name": "x", "model": {"base": "m"}})


def test_bad_values_are_named():
    bad = {**MINIMAL, "method": {"name": "magic"}, "training": {"learning_rate": -1}}
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    text = str(err.value)
    assert "method.name" in text and "unknown method 'magic'" in text
    assert "training.learning_rate" in text


def test_bad_task_and_name():
    with pytest.raises(SpecError, match="unknown task"):
        parse_spec({**MINIMAL, "task": "telepathy"})
    with pytest.raises(SpecError, match="name"):
        parse_spec({**MINIMAL, "name": "no spaces allowed"})


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_must_be_mapping(tmp_path):
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(_write(tmp_path, "- a\n- b\n"))


def test_relative_data_path_resolves_against_spec_folder(tmp_path):
    path = _write(tmp_path, yaml.safe_dump(MINIMAL))
    spec = load_spec(path)
    assert spec.data_source() == str((tmp_path / "d.txt").resolve())


def test_duplicate_labels_rejected():
    with pytest.raises(SpecError, match="duplicate"):
        parse_spec({**MINIMAL, "data": {"source": "d", "labels": ["a", "a"]}})


def test_task_options_are_validated_by_the_task():
    with pytest.raises(SpecError, match="task_options: task 'classification' takes no options"):
        parse_spec({**MINIMAL, "task_options": {"beta": 0.1}})
    spec = parse_spec({**MINIMAL, "task": "dpo", "task_options": {"beta": 0.2}})
    assert spec.task_options == {"beta": 0.2}
    with pytest.raises(SpecError, match="task_options"):
        parse_spec({**MINIMAL, "task": "dpo", "task_options": {"betta": 0.2}})
