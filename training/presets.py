"""Named training configs: the TrainConfig fields each one changes from the defaults.

    cfg = TrainConfig.model_validate(train_preset("debug"))     # seconds on 2 CPU workers
    lct config show train --preset production                    # the whole config, a --config file

    debug       lct-debug on 16x16, 4-frame shots, a few steps: does the machinery run
    demo        what `lct demo` trains (the end_to_end flow): lct-demo on 16x16 one-frame shots, 4
                scenes a step, EMA weights, one Ray Train worker with both cores' threads (faster here than
                two one-thread workers); its arguments are the demo's options and the defaults are
                the demo's defaults (the flow's ablation run adds recipe.timesteps: sync)
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


def demo(model_preset: str = "lct-demo", frames: int = 1, size: int = 16, holdout: int = 6, steps: int = 400,
         workers: int = 1) -> dict:
    return {
        "data": {"frames": frames, "size": [size, size], "holdout": holdout, "cache": True},
        "model": {"preset": model_preset},
        "recipe": {"continuation_prob": 0.1},          # what `--mode extend` continues (eval's extend row)
        "optim": {"lr": 2e-3, "warmup_steps": min(30, steps // 5), "micro_batch": 4, "ema": 0.99},
        "engine": {"workers": workers, "cpus_per_worker": max(1, 2 // workers), "zero_stage": 2},
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
