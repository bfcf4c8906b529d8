"""The t that noises a shot is the t the model is told, exactly, also with bf16 weights."""

from __future__ import annotations

import torch

from model import LCT, PRESETS, Scene, Shot, collate
from model.layers import timestep_embedding
from training.config import RecipeSection
from training.objective import add_noise, model_timesteps, sample_timesteps


def test_noising_t_is_the_model_t_in_fp32_with_bf16_weights():
    cfg = PRESETS["lct-debug"]
    model = LCT(cfg).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 3, dtype=torch.bool)
    t = sample_timesteps(mask, RecipeSection(), gen)                          # (B, S) float32
    t[0, 0] = 0.9                                                             # bf16 would make it 0.8984
    latents = [[torch.randn(3, 1, 4, 4, generator=gen) for _ in range(3)] for _ in range(2)]
    noisy, targets = add_noise(latents, t, gen)
    # recover the t of each shot from z_t = z0 + t (eps - z0) = z0 + t v
    t_noise = torch.tensor([[float(((zt - z0) / v).mean()) for zt, z0, v in zip(nb, lb, tb)]
                            for nb, lb, tb in zip(noisy, latents, targets)])
    given = model_timesteps(t, "cpu")
    assert given.dtype == torch.float32
    torch.testing.assert_close(given, t_noise, atol=1e-5, rtol=0)
    assert float(given[0, 0]) == float(torch.tensor(0.9))

    seen = []
    model.time_emb.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    batch = collate([Scene(torch.randn(2, cfg.text_dim), [Shot(torch.randn(2, cfg.text_dim), z) for z in zs])
                     for zs in noisy], cfg)
    with torch.no_grad():
        model(batch, given)
    # the time embedder gets the fp32 embedding of the exact t, cast once to the weight dtype
    torch.testing.assert_close(seen[0], timestep_embedding(t_noise).to(torch.bfloat16), atol=0.02, rtol=0)
    exact = timestep_embedding(torch.tensor([0.9]))
    rounded = timestep_embedding(torch.tensor([0.9]).to(torch.bfloat16))      # the old cast
    assert (exact - rounded).abs().max() > 0.5                                # a different timestep
    torch.testing.assert_close(seen[0][0, 0].float(), exact[0].to(torch.bfloat16).float(), atol=0, rtol=0)
