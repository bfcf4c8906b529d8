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


def test_a_run_written_before_the_shot_renames_still_loads_with_warnings(tmp_path):
    """Runs saved `data.max_shots` (now window_shots) and `model.overrides.max_shots` (now context_shots)."""
    path = tmp_path / "config.yaml"
    old = TrainConfig.model_validate(train_preset("debug"))
    dumped = old.model_dump(mode="json")
    dumped["data"] = {("max_shots" if k == "window_shots" else k): v for k, v in dumped["data"].items()} | {"max_shots": 3}
    dumped["model"]["overrides"] = {"max_shots": 4}
    path.write_text(__import__("yaml").safe_dump(dumped))
    with pytest.warns(FutureWarning) as caught:
        cfg = TrainConfig.from_yaml(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "data.max_shots is deprecated: it is now data.window_shots" in messages
    assert "model.overrides.max_shots is deprecated: it is now model.overrides.context_shots" in messages
    assert cfg.data.window_shots == 3 and cfg.arch().context_shots == 4 and cfg.window_shots == 3
    with pytest.raises(ValidationError, match="give only data.window_shots"):
        TrainConfig.model_validate({"data": {"max_shots": 3, "window_shots": 3}})
