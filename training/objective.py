"""The LCT objective: rectified flow with per-shot (asynchronous) timesteps.

    t = sample_timesteps(shot_mask, recipe, gen)             # (B, S): one t per shot (async) or per scene (sync)
    noisy, targets = add_noise(latents, t, gen)              # z_t = (1 - t) z0 + t eps,  target v = eps - z0
    loss, per_shot = flow_loss(velocities, targets, shot_mask)   # mean over real shots of per-shot MSE
    part, per_part = token_flow_loss(out, target, group, shot_mask, numel)   # the same on a token subset

Prompt dropout (classifier-free guidance): `drop_prompts(seed, step, micro, p)` decides for a
whole micro-batch, the same on every rank (ZeRO-3 needs every rank to run the same modules:
a rank with zero-length text would skip the text stream's backward hooks), and the dropped
scenes get model.sampling.null_scene with `negative_features(cfg, text)`: the very unconditional
branch the sampler uses for guidance by default (the null prompt for lct's MMDiT, the empty
string's features for Wan, as diffusers' WanPipeline).

The loss is computed per shot (mean over its elements) and averaged over the real, unpadded
shots of the batch, so a long shot and an image shot weigh the same. `token_flow_loss` is that
loss on packed video tokens (`pack_targets`); on a subset of the tokens (one rank's sequence shard,
training/sequence_parallel.py) it gives that subset's share, and the shares sum to the loss.
`bucket_losses` splits the per-shot losses by timestep for logging.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

from model.lct import patchify

from .config import RecipeSection

BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def drop_prompts(seed: int, step: int, micro: int, p: float) -> bool:
    """Whether micro-batch `micro` of `step` trains on the null prompt (rank-independent)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"drop-{seed}-{step}-{micro}".encode()))
    return bool(torch.rand((), generator=gen) < p)


def sample_timesteps(shot_mask: Tensor, recipe: RecipeSection, gen: torch.Generator) -> Tensor:
    """(B, S) t in (0, 1) from the logit-normal; padded shots get t too (ignored by mask)."""
    B, S = shot_mask.shape
    shape = (B, S) if recipe.timesteps == "async" else (B, 1)
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.sigmoid(recipe.logit_mean + recipe.logit_std * u).float()
    return t.expand(B, S).contiguous()


def model_timesteps(t: Tensor, device: torch.device | str) -> Tensor:
    """The (B, S) t handed to the model: float32 whatever the weight dtype.

    The model embeds t in float32 (model.layers.timestep_embedding); casting it to bf16 first
    would move 0.9 to 0.8984, so the model would be told another t than the one that noised the shot.
    """
    return t.to(device=device, dtype=torch.float32)


def add_noise(latents: list[list[Tensor]], t: Tensor, gen: torch.Generator) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Per shot: z_t = (1 - t) z0 + t eps and the velocity target eps - z0 (same nesting as latents)."""
    noisy, targets = [], []
    for b, shots in enumerate(latents):
        nb, tb = [], []
        for i, z0 in enumerate(shots):
            eps = torch.randn(z0.shape, generator=gen, dtype=z0.dtype)
            ti = t[b, i].to(z0.dtype)
            nb.append((1 - ti) * z0 + ti * eps)
            tb.append(eps - z0)
        noisy.append(nb)
        targets.append(tb)
    return noisy, targets


def flow_loss(velocities: list[list[Tensor]], targets: list[list[Tensor]], shot_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(scalar loss, (B, S) per-shot MSE, 0 at padding): the mean of per-shot losses over real shots."""
    B, S = shot_mask.shape
    rows = []
    for b in range(B):
        row = [((v.float() - y.to(v.device).float()) ** 2).mean() for v, y in zip(velocities[b], targets[b])]
        pad = [velocities[b][0].new_zeros((), dtype=torch.float32)] * (S - len(row))
        rows.append(torch.stack(row + pad))
    per_shot = torch.stack(rows)                                     # (B, S)
    mask = shot_mask.to(per_shot.device, per_shot.dtype)
    return (per_shot * mask).sum() / mask.sum(), per_shot


def pack_targets(targets: list[list[Tensor]], length: int, patch: tuple[int, int, int]) -> Tensor:
    """Targets v[b][i] (C, F, H, W) -> (B, length, patch_dim) in the order of collate's video tokens."""
    rows = [torch.cat([patchify(y, patch) for y in shots]) for shots in targets]   # (Lv_b, patch_dim)
    return torch.stack([F.pad(r, (0, 0, 0, length - len(r))) for r in rows])


def token_flow_loss(out: Tensor, target: Tensor, group: Tensor, shot_mask: Tensor, numel: Tensor) -> tuple[Tensor, Tensor]:
    """flow_loss over packed tokens: out, target (B, L, patch_dim); group (B, L) shot i + 1 (-1 = padding);
    numel (B, S) elements of each whole shot. Returns (loss, (B, S) per-shot MSE) of these tokens' share."""
    B, S = shot_mask.shape
    err = ((out.float() - target.to(out.device).float()) ** 2).sum(-1)              # (B, L)
    sums = err.new_zeros(B, S + 1).scatter_add(1, group.clamp(min=0), err)[:, 1:]   # column 0 = padding
    per_shot = sums / numel.to(sums.device).clamp(min=1)                           # (B, S)
    mask = shot_mask.to(per_shot.device, per_shot.dtype)
    return (per_shot * mask).sum() / mask.sum(), per_shot


def bucket_losses(per_shot: Tensor, t: Tensor, shot_mask: Tensor) -> dict[str, tuple[float, int]]:
    """{"t0.00-0.25": (sum of losses, count), ...} over real shots, for averaging across steps."""
    out = {}
    per_shot, t, mask = per_shot.detach().float().cpu(), t.cpu(), shot_mask.cpu()
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        sel = mask & (t >= lo) & ((t < hi) if hi < 1 else (t <= hi))
        out[f"t{lo:.2f}-{hi:.2f}"] = (float(per_shot[sel].sum()), int(sel.sum()))
    return out
