"""TrainConfig.from_yaml: a run's config.yaml and --config files, with errors that name file, line and key."""

import pytest
from pydantic import ValidationError

from training.config import TrainConfig, dump_yaml, key_hints
from training.presets import train_preset


def test_from_yaml_reads_back_what_dump_yaml_wrote(tmp_path):
    cfg = TrainConfig.model_validate(train_preset("debug") | {"recipe": {"timesteps": "sync"}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert TrainConfig.from_yaml(path) == cfg
    path.write_text("")
    assert TrainConfig.from_yaml(path) == TrainConfig()          # an empty file = the defaults


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  preset: lct-debug\n schedule: {steps: 3\n")
    with pytest.raises(ValueError, match=rf"{path}:3:\d+: YAML syntax error"):
        TrainConfig.from_yaml(path)


def test_an_unknown_key_gets_a_did_you_mean(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  prest: lct-debug\nschedule:\n  step: 3\n")
    with pytest.raises(ValidationError) as err:
        TrainConfig.from_yaml(path)
    assert key_hints(err.value, TrainConfig) == ["model.prest: unknown key; did you mean model.preset?",
                                                 "schedule.step: unknown key; did you mean schedule.steps?"]


def test_missing_file_and_a_non_mapping_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found: .*absent.yaml"):
        TrainConfig.from_yaml(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- model\n")
    with pytest.raises(ValueError, match=rf"{path}: expected a mapping at the top level, got list"):
        TrainConfig.from_yaml(path)


def test_training_does_not_read_yaml_through_the_curation_config():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "training"
    users = [p.name for p in root.glob("*.py")
             if re.search(r"from dataprep\.config import [^\n]*(load_yaml|read_yaml|key_hints|explain)", p.read_text())]
    assert users == []
