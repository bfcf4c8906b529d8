"""DeepSpeed: the engine, checkpoints (saved, found, loaded; universal across world sizes), export.

A checkpoint is a directory `step-XXXXXX/`:
    ds/                  DeepSpeed's files (model states + one ZeRO optimizer partition per rank)
    latest               DeepSpeed's tag pointer ("ds")
    ema.safetensors      EMA weights (when optim.ema is on)
    state.json           ours, written last: step, data position per rank, world size, seed, config
    ds_universal/        DeepSpeed's universal checkpoint, made on demand when the world size changes

DeepSpeed files are loaded with `torch.load(weights_only=True)` (SafeCheckpointEngine) and an
allow-list of the few DeepSpeed classes they contain; nothing else is unpickled. Every random
draw of training comes from generators seeded by (seed, step, rank) or (seed, epoch, scene),
so no RNG state needs saving: state.json + weights + optimizer reproduce the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address
from safetensors.torch import load_file, save_file

from model import LCT
from model.export import architecture_diff, export_dir, write_export

from .config import TrainConfig, deepspeed_config
from .resume import STATE, TAG, UNIVERSAL_TAG   # the layout; training/resume.py checks a checkpoint before a resume

log = logging.getLogger(__name__)

SAFE_GLOBALS = [LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume this run."""


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


# -- model and engine ------------------------------------------------------------------------
def build_model(cfg: TrainConfig) -> LCT:
    """The LCT of the config (or the Wan of model.pretrained), with the weights of `model.init_from` when set."""
    lct_cfg = cfg.arch()
    if cfg.model.backbone == "wan":
        from model.wan import load_wan_transformer

        options = {k: getattr(lct_cfg, k) for k in ("context_shots", "attention", "grad_checkpointing", "text_len",
                                                     "text_features")}
        model = load_wan_transformer(cfg.model.pretrained, **options)
    else:
        model = LCT(lct_cfg)
    if cfg.model.init_from:
        from model import load_export

        source = load_export(export_dir(cfg.model.init_from))
        diff = architecture_diff(lct_cfg, source.cfg)
        if diff:
            raise ValueError(
                f"model.init_from={cfg.model.init_from} has a different architecture (field: (init_from, "
                f"this run)): {diff}; only attention and grad_checkpointing may change"
            )
        model.load_state_dict(source.state_dict(), strict=True)
    if cfg.model.lora_rank:                  # after init_from: adapters start from those weights
        from model.wan import add_lora

        add_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha or cfg.model.lora_rank, tuple(cfg.model.lora_targets))
    # lets DeepSpeed's ds_to_universal converter read this model's checkpoints
    setattr(model, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE})
    return model


def init_engine(model: LCT, cfg: TrainConfig, world_size: int, universal: bool = False):
    """deepspeed.initialize with the generated config (the one in RUN/deepspeed.json); returns the engine."""
    ds = deepspeed_config(cfg, world_size)
    if universal:
        ds["checkpoint"] = {"load_universal": True}
    trainable = [p for p in model.parameters() if p.requires_grad]     # LoRA: the adapters only
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds)
    engine.checkpoint_engine = SafeCheckpointEngine(engine._config)
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """fp32 CPU copy of the whole model on rank 0 (None elsewhere); gathers ZeRO-3 partitions."""
    rank0 = dist.get_rank() == 0
    module = engine.module
    if engine.zero_optimization_partition_weights():
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()} if rank0 else None
        return state
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()} if rank0 else None


# -- EMA -------------------------------------------------------------------------------------
class EMA:
    """fp32 exponential moving average of the trainable weights (ZeRO-1/2: full weights per rank)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.weights = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for n, p in module.named_parameters():
            self.weights[n].lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with parameters replaced by their averages."""
        return {k: self.weights.get(k, v).detach().float().cpu().clone() for k, v in module.state_dict().items()}


# -- checkpoints -----------------------------------------------------------------------------
def write_checkpoint(engine, directory: str | Path, state: dict, ema: EMA | None) -> None:
    """Every rank writes its DeepSpeed files into `directory`; rank 0 writes ema + state.json last."""
    directory = Path(directory)
    engine.save_checkpoint(str(directory), tag=TAG, client_state={"lct_step": state["step"]})
    if dist.get_rank() == 0:
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.weights.items()}, str(directory / "ema.safetensors"))
        tmp = directory / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / STATE)
    dist.barrier()


def read_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {STATE}: it is not a complete lct checkpoint")
    return json.loads(path.read_text())


def make_universal(directory: Path) -> None:
    """Convert the DeepSpeed checkpoint in `directory` to the universal format (once; rank 0 only)."""
    if (directory / UNIVERSAL_TAG).is_dir() and (directory / "latest_universal").is_file():
        return
    shutil.rmtree(directory / UNIVERSAL_TAG, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
           "--input_folder", str(directory / TAG), "--output_folder", str(directory / UNIVERSAL_TAG),
           "--num_extract_workers", "1", "--num_merge_workers", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise CheckpointError(f"converting {directory} to a universal checkpoint failed:\n{run.stderr[-2000:]}")


def load_checkpoint(engine, directory: Path, universal: bool, ema: EMA | None) -> dict:
    """Load weights, optimizer and scheduler into `engine`; returns state.json."""
    state = read_state(directory)
    path, _ = engine.load_checkpoint(str(directory), tag=UNIVERSAL_TAG if universal else TAG)
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint in {directory} (tag {UNIVERSAL_TAG if universal else TAG})")
    if engine.lr_scheduler is not None:        # universal loads do not carry the schedule position
        engine.lr_scheduler.step(state["step"] - 1)
    if ema is not None:
        file = directory / "ema.safetensors"
        if file.is_file():
            ema.weights = load_file(str(file))
        else:
            log.warning("%s has no ema.safetensors; the EMA restarts from the current weights", directory)
    return state


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and stale .tmp dirs (rank 0)."""
    done = sorted(p for p in checkpoints.glob("step-*") if p.is_dir() and (p / STATE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in checkpoints.glob("step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def wan_flow_shift(folder: str) -> float:
    """The flow_shift of DIR/scheduler/scheduler_config.json (Wan's sampling shift), else Wan's 480p default."""
    from model.wan import WAN_FLOW_SHIFT

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    shift = json.loads(path.read_text()).get("flow_shift") if path.is_file() else None
    return float(shift) if shift else WAN_FLOW_SHIFT


def export(engine, cfg: TrainConfig, run_dir: Path, step: int, ema: EMA | None) -> Path | None:
    """RUN/export: model.safetensors + config.json + lct.json (EMA weights when on). Rank 0 writes."""
    state = ema.state_dict(engine.module) if ema is not None else full_state_dict(engine)
    path = None
    if dist.get_rank() == 0:
        if cfg.model.backbone == "wan":
            from model.wan import build_wan

            model = build_wan(cfg.arch())
            if cfg.model.lora_rank:          # the export holds the merged weights: a plain Wan
                from model.wan import add_lora, merge_lora

                add_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha or cfg.model.lora_rank,
                         tuple(cfg.model.lora_targets))
                model.load_state_dict(state, strict=True)
                state = merge_lora(model).state_dict()
        else:
            model = LCT(cfg.model.lct())
        model.load_state_dict(state, strict=True)
        path = write_export(
            model, run_dir / "export", text=cfg.data.text_config(), codec=cfg.data.codec_config(),
            frames=cfg.data.frames, fps=cfg.data.fps, step=step, run=str(run_dir),
            text_dropout=cfg.recipe.text_dropout,
            flow_shift=wan_flow_shift(cfg.model.pretrained) if cfg.model.backbone == "wan" else None,
        )
    dist.barrier()
    return path
