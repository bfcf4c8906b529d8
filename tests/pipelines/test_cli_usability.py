"""What users expect of a CLI: `lct` alone is help (exit 0), --version, shell completion,
`lct config show` (every default with its description, loadable back), did-you-mean for a typo."""

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config_doc import commented_yaml

runner = CliRunner()


def test_lct_alone_prints_help_and_exits_0():
    result = runner.invoke(app, [], prog_name="lct")
    assert result.exit_code == 0, result.output
    assert "Usage: lct" in result.output and "curate" in result.output and "train" in result.output
    assert runner.invoke(app, ["config"], prog_name="lct").exit_code == 0


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lct {version('lct')}"


def test_shell_completion_completes_commands_and_config_kinds():
    def complete(words: str, cword: int) -> list[str]:
        env = {"_LCT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        result = runner.invoke(app, [], env=env, prog_name="lct")
        assert result.exit_code == 0, result.output
        return result.output.split()

    assert complete("lct cur", 1) == ["curate"]
    assert complete("lct config show ", 3) == ["curate", "train", "generate"]
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="lct")
    assert script.exit_code == 0 and "complete -o default -F _lct_completion lct" in script.output


def _leaves(config, prefix=""):
    """(dotted key, pydantic field) for every leaf of a config instance."""
    from pydantic import BaseModel

    for name, field in type(config).model_fields.items():
        value, key = getattr(config, name), prefix + (field.alias or name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, key + ".")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for item in value:
                yield from _leaves(item, key + "[].")
        else:
            yield key, field


@pytest.mark.parametrize("kind", ["curate", "train", "generate"])
def test_config_show_prints_every_default_with_its_description(kind, tmp_path):
    from dataprep.config import CurateConfig
    from training.config import TrainConfig
    from training.generate import SceneSpec

    result = runner.invoke(app, ["config", "show", kind])
    assert result.exit_code == 0, result.output
    text = result.output
    cls = {"curate": CurateConfig, "train": TrainConfig, "generate": SceneSpec}[kind]
    loaded = yaml.safe_load(text)
    config = cls.model_validate(loaded)  # the printed YAML is a valid config file as it is
    assert loaded == config.model_dump(mode="json", by_alias=True)
    if kind != "generate":
        assert config == cls()  # every value is the default
    lines = text.splitlines()
    for key, field in _leaves(config):
        leaf = key.rsplit(".", 1)[-1]
        assert field.description, f"{cls.__name__}.{key} has no description"
        described = [l for l in lines if re.match(rf"\s*(- )?{re.escape(leaf)}:", l)]
        assert any(l.endswith("# " + " ".join(field.description.split())) for l in described), (key, described)


@pytest.mark.parametrize("name", ["debug", "demo", "production"])
def test_config_show_train_preset_prints_the_named_training_config(name):
    from training.config import TrainConfig
    from training.presets import train_preset

    result = runner.invoke(app, ["config", "show", "train", "--preset", name])
    assert result.exit_code == 0, result.output
    assert TrainConfig.model_validate(yaml.safe_load(result.output)) == TrainConfig.model_validate(train_preset(name))


def test_config_show_preset_errors_exit_2():
    result = runner.invoke(app, ["config", "show", "train", "--preset", "lct-debug"])
    assert result.exit_code == 2 and "is not a training preset" in result.output
    result = runner.invoke(app, ["config", "show", "curate", "--preset", "demo"])
    assert result.exit_code == 2 and "curate has no presets" in result.output


def test_commented_yaml_round_trips_awkward_values():
    from pydantic import BaseModel, Field

    class Odd(BaseModel):
        tiny: float = Field(1e-8, description="a float PyYAML would read back as a string if written 1e-08")
        hashy: str = Field("a #b: c", description="a string with YAML syntax in it")
        pair: tuple[int, int] = Field((1, 2), description="a tuple")
        empty: dict = Field(default_factory=dict, description="an empty mapping")

    assert yaml.safe_load(commented_yaml(Odd())) == Odd().model_dump(mode="json")


def test_a_mistyped_train_key_gets_a_did_you_mean(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("model:\n  prest: lct-debug\nschedule:\n  step: 3\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                 "--config", str(bad), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "did you mean model.preset?" in result.output and "did you mean schedule.steps?" in result.output
    assert not (tmp_path / "run").exists()


def test_a_mistyped_curate_key_gets_a_did_you_mean(tmp_path):
    bad = tmp_path / "curate.yaml"
    bad.write_text("shots:\n  treshold: 20\n")
    result = runner.invoke(app, ["curate", str(tmp_path), "--out", str(tmp_path / "ds"), "--config", str(bad)])
    assert result.exit_code == 2, result.output
    assert "did you mean shots.threshold?" in result.output
    assert not (tmp_path / "ds").exists()


def _has_key(cls, dotted: str) -> bool:
    from dataprep.config import _section_model

    *parents, leaf = dotted.split(".")
    for key in parents:
        cls = _section_model(cls, key)
        if cls is None:
            return False
    return leaf in cls.model_fields


def test_readme_from_the_demo_to_your_own_data_names_real_config_keys_and_paths():
    from dataprep.config import CurateConfig
    from pipelines.runlog import RunLog
    from training.config import TrainConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## From the demo to your own data", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "config key" not in line]
    keys = {k for line in table for k in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)", line.split("|")[2])}
    assert {"embed.pretrained", "caption.vlm", "data.text_path", "data.codec_path", "model.init_from", "model.pretrained"} <= keys
    for key in keys:
        assert _has_key(CurateConfig, key) or _has_key(TrainConfig, key), f"README names {key}, which no config has"
    for needle in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "RAY_AUTH_TOKEN", "lct-ray-token"):
        assert needle in section, needle
    assert ".venv/bin/lct" in readme and "source .venv/bin/activate" in readme
    log = RunLog(Path("OUT"), "curate")
    assert log.path.parent.name == "logs" and "`OUT/logs/<command>-<UTC time>.log`" in readme
