"""Validation samples during training: one fixed scene generated jointly, as mp4s and a contact sheet.

The validation scene is the first held-out scene (or the first scene of the first shard), with
no augmentation. Its prompts and shot count stay fixed for the whole run, so samples at
successive steps can be compared: RUN/samples/step-XXXXXX/{shot-000.mp4, ..., sheet.png, real.png, latents.safetensors}.
"""

from __future__ import annotations

from pathlib import Path

import torch
import webdataset as wds
from safetensors.torch import save_file

from dataprep.dataset import heldout_keys, raw_samples, shard_paths
from dataprep.media import encode_mp4, frames_sheet
from model import SamplerConfig, TextEncoder, encode_scene, sample
from model.latents import LatentCodec

from .config import DataSection, RecipeSection
from .data import Prepared, prepare

PLAIN = RecipeSection(image_prob=0.0, single_shot_prob=0.0, text_dropout=0.0)


def validation_scene(dataset: str | Path, data: DataSection, window_shots: int, holdout: int) -> Prepared:
    """The fixed scene sampled during training (the first held-out one when there are any)."""
    wanted = heldout_keys(dataset, holdout)[:1]
    for raw in raw_samples(shard_paths(dataset), wds.warn_and_continue):
        if not wanted or raw.get("__key__") == wanted[0]:
            return prepare(raw, data, PLAIN, window_shots, seed=0)
    raise ValueError(f"validation scene {wanted} not found in {dataset}")


@torch.no_grad()
def write_samples(
    module: torch.nn.Module, scene: Prepared, text: TextEncoder, codec: LatentCodec, out_dir: Path,
    steps: int, fps: float, seed: int = 0, write: bool = True,
) -> Path:
    """Generate `scene`'s shots jointly from its prompts (all ranks call this under ZeRO-3; rank 0 writes)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    shapes = [codec.latent_shape(*v.shape[:3]) for v in scene.videos]
    zeros = [torch.zeros(s, device=device) for s in shapes]
    model_scene = encode_scene(text, scene.global_caption, scene.captions, zeros)
    latents = sample(module, model_scene, SamplerConfig(steps=steps, seed=seed), mode="joint")
    module.train(was_training)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({f"shot_{i:03d}": z.float().cpu().contiguous() for i, z in enumerate(latents)},
                  str(out_dir / "latents.safetensors"))
        rows = []
        for i, z in enumerate(latents):
            frames = codec.decode(z.float().cpu()).numpy()            # (F, H, W, 3) uint8
            (out_dir / f"shot-{i:03d}.mp4").write_bytes(encode_mp4(frames, fps))
            rows.append((f"shot {i}: {scene.captions[i]}", frames))
        frames_sheet(rows, title=f"generated | {scene.key} | {scene.global_caption}").save(out_dir / "sheet.png")
        real = [(f"shot {i}: {c}", v) for i, (c, v) in enumerate(zip(scene.captions, scene.videos))]
        frames_sheet(real, title=f"real | {scene.key}").save(out_dir / "real.png")
    return out_dir
