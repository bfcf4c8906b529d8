"""The sampling-free probe of cross-shot attention: does a shot's loss drop when the others are clean?

    clean, noise = probe_losses(bundle, global_caption, captions, videos, seed)

The last shot of a real scene is noised to t = PROBE_T with a fixed noise; the other shots are
either clean (t = 0, their real latents) or pure noise (t = 1). `clean` and `noise` are the
flow-matching losses of that shot in the two cases. A model that uses the other shots of the
scene predicts better when they are clean: ratio = mean(clean) / mean(noise) < 1. Trained with
asynchronous timesteps it has seen clean neighbours; the hypothesis for a model trained with
synchronous timesteps (every shot at the same t) is that it never has, so it has no reason to do
better (ratio ~ 1, `probe_ratio_sync >= 1` in lct eval). Measured in the demo it is not so: the sync
ablation's ratio is ~0.7-0.75 (the async model's ~0.6-0.66). At a small shared t its neighbours are
nearly clean, and at a large one still informative, so a sync-trained model also learns to read the
other shots, and clean ones help it too; the criterion is kept and reported as it falls.
Paired over the same scenes and noise, the async ratio / the sync ratio (`probe_async_over_sync`
in eval.json, not a criterion) does separate them: 0.878 [0.803, 0.959] on the demo's checkpoints,
so async training reads clean neighbours more, if not to the degree the criteria assumed.
"""

from __future__ import annotations

import numpy as np
import torch

from model import collate, encode_scene
from model.export import InferenceBundle

from .objective import model_timesteps

PROBE_T = 0.9


@torch.no_grad()
def probe_losses(bundle: InferenceBundle, global_caption: str, captions: list[str], videos: list[np.ndarray],
                 seed: int = 0) -> tuple[float, float] | None:
    """(loss with the other shots clean, loss with them pure noise) of the last shot; None for 1 shot."""
    if len(videos) < 2:
        return None
    model = bundle.model
    device = next(model.parameters()).device
    latents = [bundle.codec.encode(torch.from_numpy(v)).float() for v in videos]      # (C, F, H, W) each
    gen = torch.Generator().manual_seed(seed)
    eps = [torch.randn(z.shape, generator=gen) for z in latents]
    S = len(latents)
    losses = []
    for t_other in (0.0, 1.0):
        t = torch.full((1, S), t_other)
        t[0, -1] = PROBE_T
        noisy = [(1 - t[0, i]) * z + t[0, i] * e for i, (z, e) in enumerate(zip(latents, eps))]
        scene = encode_scene(bundle.text, global_caption, captions, noisy)
        batch = collate([scene], model.cfg).to(device)
        v = model(batch, model_timesteps(t, device))[0][-1].float().cpu()
        losses.append(float(((v - (eps[-1] - latents[-1])) ** 2).mean()))
    return losses[0], losses[1]
