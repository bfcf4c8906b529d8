"""Named training configs: the TrainConfig fields each one changes from the defaults.

    cfg = TrainConfig.model_validate(train_preset("debug"))     # seconds on 2 CPU workers
    lct config show train --preset production                    # the whole config, a --config file

    debug       lct-debug on 16x16, 4-frame shots, a few steps: does the machinery run
    demo        what `lct demo` trains (the end_to_end flow): lct-small on 32x32, 8-frame shots;
                its arguments are the demo's options, and the defaults are the demo's defaults
    production  the reference infra/deepspeed/zero{2,3}.json are generated from: lct-3b on 8 GPUs,
                Wan VAE latents, T5 text (`python -m training.config infra/deepspeed`)

A preset is a plain dict (JSON values), so flows pass it as a parameter and users can merge
their own keys into it; `model.preset` inside it names the architecture (`model.PRESETS`).
"""

from __future__ import annotations

import json
from typing import Callable


def debug() -> dict:
    return {
        "data": {"frames": 4, "size": [16, 16]},
        "model": {"preset": "lct-debug"},
        "optim": {"warmup_steps": 1},
        "engine": {"workers": 2, "zero_stage": 2},
        "schedule": {"steps": 4, "checkpoint_every": 2, "report_every": 2, "sample_steps": 2},
    }


def demo(model_preset: str = "lct-small", frames: int = 8, size: int = 32, holdout: int = 2, steps: int = 300,
         workers: int = 2) -> dict:
    return {
        "data": {"frames": frames, "size": [size, size], "holdout": holdout},
        "model": {"preset": model_preset},
        "optim": {"lr": 5e-4, "warmup_steps": min(20, steps // 5)},
        "engine": {"workers": workers, "zero_stage": 2},
        "schedule": {"steps": steps, "checkpoint_every": max(1, steps // 3), "sample_every": max(1, steps // 3),
                     "sample_steps": 8},
    }


def production() -> dict:
    return {
        "data": {"codec": "vae", "codec_path": "/models/wan-vae", "text_kind": "t5", "text_path": "/models/t5-xxl",
                 "frames": 41, "size": [480, 480], "window_shots": 8},
        "model": {"preset": "lct-3b", "grad_checkpointing": True},
        "optim": {"lr": 1e-4, "warmup_steps": 1000},
        "engine": {"gpus_per_worker": 1, "workers": 8},
        "schedule": {"steps": 135_000, "checkpoint_every": 1000},
    }


TRAIN_PRESETS: dict[str, Callable[..., dict]] = {"debug": debug, "demo": demo, "production": production}


def train_preset(name: str, **params) -> dict:
    """The fields of the training preset `name` (a fresh dict); `params` go to the preset (demo's options)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"{name!r} is not a training preset; choose one of {sorted(TRAIN_PRESETS)} "
                         "(model presets such as lct-debug go in model.preset, `lct train --preset`)")
    return json.loads(json.dumps(TRAIN_PRESETS[name](**params)))
