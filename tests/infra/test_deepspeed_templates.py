"""infra/deepspeed/*.json are generated from the training config (one source of truth for batch sizes)."""

import json
from pathlib import Path

import pytest

from training.config import TrainConfig, production_deepspeed
from training.presets import train_preset

PRODUCTION = train_preset("production")

INFRA = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"


@pytest.mark.parametrize("stage", [2, 3])
def test_template_matches_the_generator(stage):
    on_disk = json.loads((INFRA / f"zero{stage}.json").read_text())
    assert on_disk == production_deepspeed(stage), (
        f"infra/deepspeed/zero{stage}.json is stale: regenerate with `python -m training.config infra/deepspeed`"
    )
    workers = PRODUCTION["engine"]["workers"]
    assert on_disk["train_batch_size"] == on_disk["train_micro_batch_size_per_gpu"] * on_disk["gradient_accumulation_steps"] * workers
    assert on_disk["zero_optimization"]["stage"] == stage and on_disk["bf16"]["enabled"]


def test_production_reference_is_a_valid_config():
    cfg = TrainConfig.model_validate(PRODUCTION)
    assert cfg.model.lct().latent_channels == 16 and cfg.window_shots == 8
