"""Typed configuration of `lct train`, and the DeepSpeed JSON generated from it.

One pydantic tree (unknown keys are errors), loadable from YAML (`TrainConfig.from_yaml`), saved
whole to `RUN/config.yaml`. Each part of the trainer takes only its own section. Batch sizes live in
one place (`optim.micro_batch`, `optim.grad_accum`, `engine.workers`): `deepspeed_config`
derives the DeepSpeed JSON from them, and `RUN/deepspeed.json` is what the engine used.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dataprep.configfile import key_hints, load_yaml, renamed  # noqa: F401 (key_hints: callers explain TrainConfig errors)
from model import PRESETS, LCTConfig, LatentCodecConfig, TextEncoderConfig
from training.presets import TRAIN_PRESETS, train_preset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    """The LCT architecture: a preset from model.PRESETS plus field overrides."""

    preset: str = Field("lct-small", description=f"One of {sorted(PRESETS)}.")
    overrides: dict = Field(default_factory=dict, description="LCTConfig fields to change, e.g. {depth: 2}.")
    attention: Literal["bidirectional", "context_causal"] = Field(
        "bidirectional", description="context_causal = the paper's causal fine-tune (start it with init_from)."
    )
    grad_checkpointing: bool = Field(False, description="Recompute block activations in backward (less memory).")
    init_from: str | None = Field(
        None, description="Start from the weights of a run dir or export dir (e.g. the bidirectional run)."
    )
    backbone: Literal["lct-mmdit", "wan"] = Field(
        "lct-mmdit", description="lct-mmdit = the native MMDiT from scratch; wan = tune the Wan 2.x in model.pretrained."
    )
    pretrained: str | None = Field(
        None, description="Local diffusers Wan folder (transformer/, vae/, text_encoder/ + tokenizer/); implies backbone wan."
    )
    text_len: int = Field(512, ge=1, description="wan: prompt tokens per shot, [global; shot] zero-padded to this (Wan: 512).")
    lora_rank: int = Field(0, ge=0, description="wan: LoRA rank on attention + FFN projections (0 = full fine-tune).")
    lora_alpha: float | None = Field(None, gt=0, description="wan: LoRA alpha (scale alpha / rank); default = rank.")
    lora_targets: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
        description="wan: linears of each block given LoRA adapters (self/cross-attention and FFN).")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        if isinstance(data, dict) and isinstance(data.get("overrides"), dict):
            data = {**data, "overrides": renamed(data["overrides"], "model.overrides", {"max_shots": "context_shots"})}
        return data

    @model_validator(mode="before")
    @classmethod
    def _pretrained_means_wan(cls, data):
        if isinstance(data, dict) and data.get("pretrained"):    # --pretrained DIR alone is enough
            data = {**data, "backbone": "wan"}
        return data

    @model_validator(mode="after")
    def _known_preset(self) -> "ModelSection":
        if self.backbone == "wan":
            if not self.pretrained:
                raise ValueError("model.backbone=wan needs model.pretrained = a local diffusers Wan folder "
                                 "(lct train --pretrained DIR; try examples/make_tiny_wan.py OUT)")
            from model.wan import check_weights, read_transformer_config

            check_weights(self.pretrained, read_transformer_config(self.pretrained))   # names file and key
            return self
        if self.lora_rank:
            raise ValueError("model.lora_rank is for backbone wan (tuning a pre-trained model); the native "
                             "lct-mmdit trains from scratch: set lora_rank 0")
        if self.preset not in PRESETS:
            also = (f" ({self.preset!r} is a training preset: lct config show train --preset {self.preset})"
                    if self.preset in TRAIN_PRESETS else "")
            raise ValueError(f"model.preset={self.preset!r} is not a preset; choose one of {sorted(PRESETS)}{also}")
        self.lct()  # validates the overrides with LCTConfig's own checks
        return self

    def lct(self) -> LCTConfig:
        base = PRESETS[self.preset]
        unknown = sorted(set(self.overrides) - set(LCTConfig.__dataclass_fields__))
        if unknown:
            known = list(LCTConfig.__dataclass_fields__)
            hints = [f"{k} -> did you mean {close[0]}?" for k in unknown
                     for close in [difflib.get_close_matches(k, known, n=1, cutoff=0.6)] if close]
            raise ValueError(f"model.overrides has unknown LCTConfig fields {unknown}"
                             + (f" ({'; '.join(hints)})" if hints else f"; LCTConfig fields are {known}"))
        fields = dict(self.overrides)
        if "patch" in fields:
            fields["patch"] = tuple(fields["patch"])
        return base.with_(**fields, attention=self.attention, grad_checkpointing=self.grad_checkpointing)


class DataSection(_Strict):
    """Scenes from `lct curate` shards, decoded and encoded on the fly."""

    dataset: str = Field("", description="Curated dataset dir (holds shards/ and dataset.json).")
    frames: int = Field(8, ge=1, description="Video frames taken from each shot.")
    fps: float = Field(8.0, gt=0, description="Frame rate the frames are taken at.")
    size: tuple[int, int] = Field((32, 32), description="(H, W) frames are resized (cover + crop) to.")
    window_shots: int | None = Field(
        None, ge=1, description="Most consecutive shots of a scene in one training sample; default = the model's "
        "context_shots (was `max_shots`).")
    shuffle_buffer: int = Field(64, ge=1, description="Scenes in the shuffle buffer of each rank.")
    holdout: int = Field(0, ge=0, description="Scenes held out for evaluation (dataprep.dataset.heldout_keys).")
    prefetch: int = Field(4, ge=1, description="Decoded scenes queued ahead of the step by a background thread.")
    text_kind: Literal["minilm", "open_clip", "t5"] = Field("minilm", description="Text encoder (model/text.py).")
    text_path: str | None = Field(None, description="Local weights of the text encoder (default: packaged MiniLM).")
    text_max_tokens: int = Field(77, ge=2, description="Prompt tokens kept.")
    codec: Literal["pixel", "vae"] = Field("pixel", description="Latent codec: pixel space or a Wan VAE.")
    codec_path: str | None = Field(None, description="Local diffusers dir of the VAE (codec=vae).")
    cache: bool = Field(
        False, description="Encode each shot clip (VAE) and prompt (text encoder) once and reuse it on later "
        "epochs and on resume (training/cache.py); fixes each shot's time window and image frame across epochs.")
    cache_dir: str | None = Field(
        None, description="Where data.cache keeps its entries (default RUN/cache); keyed by the encoders' "
        "config + weights, so runs with the same VAE and text encoder may share one dir.")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        return renamed(data, "data", {"max_shots": "window_shots"})

    def text_config(self) -> TextEncoderConfig:
        return TextEncoderConfig(kind=self.text_kind, path=self.text_path, max_tokens=self.text_max_tokens)

    def codec_config(self) -> LatentCodecConfig:
        return LatentCodecConfig(kind=self.codec, size=tuple(self.size), path=self.codec_path)


class RecipeSection(_Strict):
    """The LCT training recipe."""

    timesteps: Literal["async", "sync"] = Field(
        "async", description="async: every shot draws its own t (LCT); sync: one t per scene (ablation)."
    )
    logit_mean: float = Field(0.0, description="m of the logit-normal t = sigmoid(m + s * N(0, 1)).")
    logit_std: float = Field(1.0, gt=0, description="s of the logit-normal.")
    image_prob: float = Field(0.1, ge=0, le=1, description="Chance a shot is replaced by one of its frames.")
    single_shot_prob: float = Field(0.1, ge=0, le=1, description="Chance a sample is one shot of its scene.")
    continuation_prob: float = Field(
        0.0, ge=0, le=1, description="Chance a sample is consecutive segments of one shot, prompts without "
        "[SHOT CUT] (what `lct generate --mode extend` continues; shots too short for 2 segments are skipped).")
    text_dropout: float = Field(0.1, ge=0, le=1, description="Chance all prompts of a scene are dropped (CFG).")


class OptimSection(_Strict):
    """AdamW, its warm-up + cosine schedule, and the batch per step."""

    lr: float = Field(3e-4, gt=0, description="Peak AdamW learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps, then cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine ends at lr * min_lr_ratio.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clipping (0 = off).")
    micro_batch: int = Field(1, ge=1, description="Scenes per worker per forward.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the weights (None = off); exported if on.")


class EngineSection(_Strict):
    """DeepSpeed and Ray Train."""

    zero_stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Optimizer states on CPU (DeepSpeedCPUAdam).")
    offload_params: bool = Field(False, description="Parameters on CPU (ZeRO-3 only).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU.")
    workers: int = Field(2, ge=1, description="Training processes (Ray Train workers).")
    sequence_parallel: int = Field(
        1, ge=1, description="Ulysses SP degree P: each scene is split over P consecutive ranks (L/P tokens each); "
                             "P must divide the workers and the model's attention heads.")
    gpus_per_worker: int = Field(0, ge=0, le=1, description="1 = CUDA + NCCL, 0 = CPU + gloo.")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs reserved per worker (and torch threads).")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else local).")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint.")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker else "cpu"

    @property
    def dtype(self) -> torch.dtype:
        if self.precision == "auto":
            return torch.bfloat16 if self.gpus_per_worker else torch.float32
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


class ScheduleSection(_Strict):
    """How long to train, and how often to log, checkpoint and sample."""

    steps: int = Field(200, ge=1, description="Optimizer steps in total (a resumed run continues to this).")
    log_every: int = Field(1, ge=1, description="Steps between metric lines (metrics.jsonl, TensorBoard).")
    report_every: int = Field(
        20, ge=1, description="Steps between metric reports to Ray Train (each is a barrier across workers)."
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (one is always written at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (older ones are deleted).")
    sample_every: int = Field(0, ge=0, description="Steps between validation samples (0 = only at the end).")
    sample_steps: int = Field(10, ge=1, description="Euler steps of the validation sample.")
    seed: int = Field(0, description="Seeds data order, augmentation, timesteps and noise.")


class TrainConfig(_Strict):
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    recipe: RecipeSection = RecipeSection()
    optim: OptimSection = OptimSection()
    engine: EngineSection = EngineSection()
    schedule: ScheduleSection = ScheduleSection()

    @model_validator(mode="before")
    @classmethod
    def _wan_folder_parts(cls, data):
        """With a Wan folder, the latents come from its vae/ and the text from its text_encoder/ (umT5).
        `init_from` a Wan run without `pretrained`: the run's own base folder (init_from_base)."""
        if not isinstance(data, dict):
            return data
        model = dict(data.get("model") or {})
        if model.get("init_from") and not model.get("pretrained"):
            base = init_from_base(model["init_from"])
            if base:
                model["pretrained"] = base
                data = {**data, "model": model}
        if not model.get("pretrained"):
            return data
        folder, section = Path(model["pretrained"]), dict(data.get("data") or {})
        if section.get("codec", "pixel") == "pixel" and (folder / "vae" / "config.json").is_file():
            section |= {"codec": "vae", "codec_path": str(folder / "vae")}
        if (section.get("text_kind", "minilm") == "minilm" and not section.get("text_path")
                and (folder / "text_encoder" / "config.json").is_file()):
            section |= {"text_kind": "t5", "text_path": str(folder / "text_encoder"),
                        "text_max_tokens": int(model.get("text_len", 512))}
        return {**data, "data": section}

    def arch(self):
        """The model architecture: an LCTConfig (lct-mmdit) or a WanConfig (wan, from the folder)."""
        if self.model.backbone != "wan":
            return self.model.lct()
        from model.wan import WanConfig, read_transformer_config

        args = read_transformer_config(self.model.pretrained)
        features = None
        if not (self.data.text_kind == "t5" and self.data.text_path):
            features = 384 if self.data.text_kind == "minilm" and not self.data.text_path else None
            if features is None:
                raise ValueError("backbone wan with a text encoder other than the folder's umT5 or the packaged "
                                 "MiniLM: give the folder a text_encoder/ or use text_kind minilm")
        elif Path(self.data.text_path).resolve() != (Path(self.model.pretrained) / "text_encoder").resolve():
            d_model = json.loads((Path(self.data.text_path) / "config.json").read_text()).get("d_model")
            features = None if d_model == args["text_dim"] else d_model
        return WanConfig(args, context_shots=self.data.window_shots or 9, attention=self.model.attention,
                         grad_checkpointing=self.model.grad_checkpointing, text_len=self.model.text_len,
                         text_features=features)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        lct, data, engine = self.arch(), self.data, self.engine
        if data.window_shots is not None and data.window_shots > lct.context_shots:
            raise ValueError(
                f"data.window_shots={data.window_shots} exceeds the model's context_shots={lct.context_shots} "
                f"({self.model.preset}); lower data.window_shots or set model.overrides.context_shots"
            )
        p_t, p_h, p_w = lct.patch
        h, w = data.size
        if data.codec == "pixel" and (h % p_h or w % p_w or data.frames % p_t):
            raise ValueError(
                f"data.size={data.size} and data.frames={data.frames} must be multiples of the patch "
                f"(p_t, p_h, p_w)={lct.patch} of {self.model.preset}"
            )
        if data.codec == "pixel" and lct.latent_channels != 3:
            raise ValueError(
                f"codec=pixel gives 3 latent channels but {self.model.preset} expects "
                f"{lct.latent_channels}; use codec=vae with a VAE of that many channels"
            )
        if self.model.backbone == "wan" and data.codec == "vae" and data.codec_path:
            vae = Path(data.codec_path) / "config.json"
            z_dim = json.loads(vae.read_text()).get("z_dim") if vae.is_file() else None
            if z_dim != lct.latent_channels:
                raise ValueError(f"{vae}: key z_dim is {z_dim} but the Wan transformer in {self.model.pretrained} "
                                 f"takes in_channels={lct.latent_channels} latent channels (a VAE of another model)")
        for kind, path, what in ((data.codec, data.codec_path, "codec"), (data.text_kind, data.text_path, "text")):
            if kind in ("vae", "t5") and not path:
                raise ValueError(
                    f"data.{'codec' if what == 'codec' else 'text_kind'}={kind} needs data.{what}_path = a local "
                    f"model dir (nothing is downloaded); or use {'codec: pixel' if what == 'codec' else 'text_kind: minilm'}"
                )
        if engine.sequence_parallel > 1:
            from .sequence_parallel import check_heads, check_world

            check_heads(lct.heads, engine.sequence_parallel)
            check_world(engine.workers, engine.sequence_parallel)
        if engine.zero_stage == 3 and self.optim.ema is not None:
            raise ValueError("optim.ema needs the full weights on every rank: use zero_stage 1 or 2, or ema: null")
        if engine.offload_params and engine.zero_stage != 3:
            raise ValueError(f"engine.offload_params needs zero_stage 3, got zero_stage {engine.zero_stage}")
        if engine.precision == "bf16" and not engine.gpus_per_worker:
            raise ValueError("engine.precision=bf16 is for CUDA workers; on CPU use fp32 (or precision auto)")
        return self

    @property
    def window_shots(self) -> int:
        """Most shots of one training sample: data.window_shots, else the model's context_shots."""
        return self.data.window_shots or self.arch().context_shots

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """A `--config` file or a run's config.yaml. A YAML syntax error names file:line:column; a
        bad value raises pydantic's ValidationError (`key_hints` turns unknown keys into did-you-means)."""
        return load_yaml(cls, path)


def init_from_base(init_from: str | Path) -> str | None:
    """The base Wan folder of a Wan run given as `model.init_from` (its RUN/config.yaml's model.pretrained),
    so `--init-from WAN_RUN` alone tunes the same base; None when it is not a Wan run (or not an export:
    launch.check says so). A Wan export without its run's config.yaml cannot say: ValueError."""
    from model.export import CONFIG, export_dir

    try:
        directory = export_dir(init_from)
        backbone = json.loads((directory / CONFIG).read_text()).get("backbone")
    except (OSError, ValueError):
        return None
    if backbone != "wan":
        return None
    for run_config in (directory / "config.yaml", directory.parent / "config.yaml"):
        if run_config.is_file():
            base = ((yaml.safe_load(run_config.read_text()) or {}).get("model") or {}).get("pretrained")
            if base:
                return str(base)
    raise ValueError(f"model.init_from={init_from} is a Wan export whose base folder is unknown (no run "
                     "config.yaml beside it): pass --pretrained DIR, the Wan folder it was tuned from")


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# -- YAML files and their errors (the same rules as dataprep/config.py: training does not import
#    the curation config to read its own files, and dataprep never imports training) ---------------
def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON for this config at this world size (the only place batch sizes combine)."""
    optim, engine = cfg.optim, cfg.engine
    zero: dict = {"stage": engine.zero_stage, "overlap_comm": bool(engine.gpus_per_worker)}
    if engine.zero_stage >= 2:
        zero |= {"contiguous_gradients": True, "reduce_scatter": True}
    if engine.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(engine.gpus_per_worker)}
    if engine.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(engine.gpus_per_worker)}
    if engine.zero_stage == 3:
        zero |= {"stage3_gather_16bit_weights_on_model_save": False}
    steps = cfg.schedule.steps
    return {
        "train_batch_size": optim.micro_batch * optim.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": optim.micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr, "betas": list(optim.betas), "eps": 1e-8, "weight_decay": optim.weight_decay,
                # on CPU use torch's AdamW (no C++ build); on CUDA DeepSpeed's fused kernel
                "torch_adam": not engine.gpus_per_worker and not engine.offload_optimizer,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(steps, optim.warmup_steps + 1),
                "warmup_num_steps": max(1, optim.warmup_steps),   # DeepSpeed needs >= 1
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": optim.min_lr_ratio,
                "warmup_type": "linear",
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": engine.dtype == torch.bfloat16},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def production_deepspeed(stage: int) -> dict:
    """The DeepSpeed JSON of the production preset at ZeRO `stage` (infra/deepspeed/zero{stage}.json)."""
    data = train_preset("production")
    data["engine"]["zero_stage"] = stage
    cfg = TrainConfig.model_validate(data)
    return deepspeed_config(cfg, cfg.engine.workers)


if __name__ == "__main__":   # python -m training.config infra/deepspeed : regenerate the templates
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "infra/deepspeed")
    out.mkdir(parents=True, exist_ok=True)
    for stage in (2, 3):
        (out / f"zero{stage}.json").write_text(json.dumps(production_deepspeed(stage), indent=2) + "\n")
        print(f"wrote {out / f'zero{stage}.json'}")
