"""training/presets.py: every named training config validates, and each is what it says it is."""

import inspect

import pytest

from model import PRESETS
from training.config import TrainConfig
from training.presets import TRAIN_PRESETS, train_preset


@pytest.mark.parametrize("name", sorted(TRAIN_PRESETS))
def test_every_preset_validates_and_is_a_fresh_dict(name):
    cfg = TrainConfig.model_validate(train_preset(name))
    assert cfg != TrainConfig()                                   # it changes something
    assert cfg.model.preset in PRESETS                            # names a model architecture
    first = train_preset(name)
    first["model"]["preset"] = "changed"
    assert train_preset(name)["model"]["preset"] == cfg.model.preset   # callers may edit their copy


def test_debug_is_tiny_and_production_is_the_paper_scale_reference():
    debug = TrainConfig.model_validate(train_preset("debug"))
    assert debug.model.preset == "lct-debug" and debug.data.size == (16, 16) and debug.schedule.steps <= 10
    prod = TrainConfig.model_validate(train_preset("production"))
    assert prod.model.lct().latent_channels == 16 and prod.window_shots == 8 and prod.engine.workers == 8
    assert prod.engine.device == "cuda" and prod.data.codec == "vae" and prod.data.text_kind == "t5"


def test_demo_takes_the_demo_options_and_derives_its_schedule():
    cfg = TrainConfig.model_validate(train_preset("demo", model_preset="lct-debug", frames=4, size=16, holdout=1,
                                                  steps=30, workers=1))
    assert (cfg.model.preset, cfg.data.frames, cfg.data.size, cfg.data.holdout, cfg.engine.workers) == (
        "lct-debug", 4, (16, 16), 1, 1)
    assert (cfg.schedule.steps, cfg.schedule.checkpoint_every, cfg.schedule.sample_every, cfg.optim.warmup_steps) == (
        30, 10, 10, 6)


def test_the_demo_defaults_are_lct_demo_defaults():
    """`lct demo` with no options trains exactly `lct config show train --preset demo`."""
    from pipelines.flows.end_to_end import end_to_end

    flow = inspect.signature(end_to_end.fn).parameters
    demo = inspect.signature(TRAIN_PRESETS["demo"]).parameters
    as_flow = {"model_preset": "preset", "holdout": "eval_scenes"}
    assert {k: p.default for k, p in demo.items()} == {k: flow[as_flow.get(k, k)].default for k in demo}


def test_an_unknown_name_lists_the_presets_and_a_model_preset_is_pointed_here():
    with pytest.raises(ValueError, match=r"'lct-debug' is not a training preset; choose one of \['debug', 'demo', 'production'\]"):
        train_preset("lct-debug")
    with pytest.raises(ValueError, match=r"'debug' is a training preset: lct config show train --preset debug"):
        TrainConfig.model_validate({"model": {"preset": "debug"}})
