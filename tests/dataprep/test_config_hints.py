"""dataprep.config.key_hints: a did-you-mean line per unknown key, for any strict config tree."""

import pytest
from pydantic import ValidationError

from dataprep.config import CurateConfig, key_hints


def _hints(cls, data) -> list[str]:
    with pytest.raises(ValidationError) as err:
        cls.model_validate(data)
    return key_hints(err.value, cls)


def test_nested_typos_name_the_full_dotted_key():
    assert _hints(CurateConfig, {"shots": {"treshold": 20}, "max_failur_rate": 0.5}) == [
        "shots.treshold: unknown key; did you mean shots.threshold?",
        "max_failur_rate: unknown key; did you mean max_failure_rate?",
    ]


def test_a_key_far_from_any_lists_what_the_section_knows():
    (hint,) = _hints(CurateConfig, {"probe": {"zzzz": 1}})
    assert hint.startswith("probe.zzzz: unknown key; this section knows ['min_duration_s', 'hash_bytes']")


def test_list_items_and_aliases_of_the_scene_file():
    from training.generate import SceneSpec

    hints = _hints(SceneSpec, {"globl": "x", "shots": [{"prompt": "a"}, {"promt": "b", "condition": {"imag": "a.png"}}]})
    assert "globl: unknown key; did you mean global?" in hints
    assert "shots.1.promt: unknown key; did you mean shots.1.prompt?" in hints
    assert "shots.1.condition.imag: unknown key; did you mean shots.1.condition.image?" in hints


def test_train_config_and_lct_overrides():
    from training.config import TrainConfig

    assert _hints(TrainConfig, {"engine": {"zero_stag": 3}}) == ["engine.zero_stag: unknown key; did you mean engine.zero_stage?"]
    with pytest.raises(ValidationError, match="did you mean depth"):
        TrainConfig.model_validate({"model": {"overrides": {"dept": 2}}})


def test_other_errors_give_no_hints():
    assert _hints(CurateConfig, {"max_failure_rate": 3}) == []


def test_the_scene_file_error_carries_the_hint(tmp_path):
    from training.generate import SceneError, load_scene

    scene = tmp_path / "scene.yaml"
    scene.write_text("global: g\nshots:\n  - promt: a\n")
    with pytest.raises(SceneError, match=r"shots\.0\.promt: unknown key; did you mean shots\.0\.prompt\?"):
        load_scene(scene)
