"""Tests that fail when the sampler's signs, guidance, t_c or conditioning are wrong.

They drive model/sampling.py with *constructed* models whose velocity field is known, so the
expected output is computed by hand: an Euler sampler with a flipped sign, a guidance formula
with the branches swapped, history re-noised at another t than the one the model is told, or a
conditioned shot that never reaches the model (a shortcut returning the input) all fail here.
"""

from __future__ import annotations

import torch
from torch import nn

from model import SamplerConfig, Scene, Shot, collate, sample
from model.lct import unpack
from model.sampling import euler, sample_shots
from tests.model.test_lct import CFG, make_model, make_scene

SHAPE = (CFG.latent_channels, 2, 4, 4)


class Oracle(nn.Module):
    """v = (z - x0) / t: the exact rectified-flow velocity towards x0 (Euler reaches x0 exactly).

    x0 of a shot with its prompt is `text_target`, without (the null prompt) `null_target`;
    with `follow_shot=j`, x0 of every other shot is what shot j's tokens hold (so the output
    shows what the model saw). Every call is recorded: (t, per-shot latents as seen).
    """

    def __init__(self, text_target: torch.Tensor, null_target: torch.Tensor, follow_shot: int | None = None):
        super().__init__()
        self.cfg = CFG
        self.anchor = nn.Parameter(torch.zeros(()))         # the sampler reads the device from it
        self.text_target, self.null_target, self.follow = text_target, null_target, follow_shot
        self.calls: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def forward(self, batch, t):
        z = unpack(batch.vid, batch, CFG.patch)              # what the model is given, per shot
        self.calls.append((t.clone(), [x.clone() for x in z[0]]))
        out = []
        for b, shots in enumerate(z):
            row = []
            for i, zi in enumerate(shots):
                has_text = bool((batch.txt_group[b] == i + 1).any())
                x0 = self.text_target if has_text else self.null_target
                if self.follow is not None and i != self.follow:
                    x0 = shots[self.follow]
                row.append((zi - x0) / t[b, i].clamp(min=1e-6))
            out.append(row)
        return out


def scene_of(n: int, seed: int = 0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    return Scene(torch.randn(3, CFG.text_dim, generator=g),
                 [Shot(torch.randn(4, CFG.text_dim, generator=g), torch.zeros(SHAPE)) for _ in range(n)])


A, B = torch.full(SHAPE, 0.75), torch.full(SHAPE, -0.5)


def test_euler_reaches_the_target_of_a_known_velocity_field():
    target = torch.linspace(-1, 1, 32).reshape(2, 4, 4)
    start = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    for steps, shift in ((1, 1.0), (5, 1.0), (7, 3.0)):
        config = SamplerConfig(steps=steps, shift=shift)
        out = euler(config, {0: start.clone()}, lambda t, z: {0: (z[0] - target) / t})
        torch.testing.assert_close(out[0], target, atol=1e-5, rtol=0)
        # constant field v = eps - x0 (the training target): integrating from t = 1 lands on x0
        out = euler(config, {0: start.clone()}, lambda t, z: {0: start - target})
        torch.testing.assert_close(out[0], target, atol=1e-5, rtol=0)
    flipped = start + (start - target)                      # z <- z - (t' - t) v: the wrong sign
    assert (flipped - target).abs().max() > 0.5


def test_the_sampler_lands_on_the_oracle_target_in_every_mode():
    oracle = Oracle(A, B)
    config = SamplerConfig(steps=4, shift=2.0, seed=1)
    for mode in ("joint", "autoregressive"):
        for z in sample(oracle, scene_of(2), config, mode):
            torch.testing.assert_close(z, A, atol=1e-5, rtol=0)


def test_guidance_moves_towards_the_conditional_prediction():
    oracle = Oracle(A, B)
    for scale in (1.0, 2.0, 4.0):
        out = sample(oracle, scene_of(2), SamplerConfig(steps=3, cfg_scale=scale, seed=2))
        expected = B + scale * (A - B)                        # v_null + s (v_text - v_null), integrated
        for z in out:
            torch.testing.assert_close(z, expected, atol=1e-5, rtol=0)
    # with s > 1 the guided sample is further along null -> text than the unguided one
    plain = sample(oracle, scene_of(1), SamplerConfig(steps=3, seed=2))[0]
    guided = sample(oracle, scene_of(1), SamplerConfig(steps=3, cfg_scale=3.0, seed=2))[0]
    direction = (A - B).flatten()
    assert float((guided - plain).flatten() @ direction) > 0
    swapped = A + 3.0 * (B - A)                               # v_text + s (v_null - v_text)
    assert (guided - swapped).abs().min() > 1.0


def test_history_is_renoised_once_at_t_c_and_the_model_is_told_t_c():
    t_c, seed = 0.3, 4
    oracle = Oracle(A, B)
    config = SamplerConfig(steps=3, t_c=t_c, seed=seed)
    out = sample_shots(oracle, scene_of(2), config, select=lambda k: list(range(k)), use_cache=False)
    # the sampler's generator (model/sampling.py): noise of shot 0, then shot 0's re-noising, then shot 1's noise
    gen = torch.Generator().manual_seed(seed)
    torch.randn(SHAPE, generator=gen)
    eps = torch.randn(SHAPE, generator=gen)
    history = (1 - t_c) * out.latents[0] + t_c * eps
    shot1_calls = [c for c in oracle.calls if c[0].shape == (1, 2)]
    assert len(shot1_calls) == config.steps
    for t, seen in shot1_calls:
        assert abs(float(t[0, 0]) - t_c) < 1e-7                         # history's t is t_c at every step
        torch.testing.assert_close(seen[0], history, atol=1e-6, rtol=0)   # ... and noised at t_c
        wrong = (1 - 0.5) * out.latents[0] + 0.5 * eps        # re-noised at another t
        assert (seen[0] - wrong).abs().max() > 0.1


def test_cached_history_equals_history_renoised_at_t_c():
    """A context-causal LCT with its KV-cache: shot 1 == Euler on [global, shot 0 at t_c, shot 1]."""
    model = make_model("context_causal", seed=3)
    scene = make_scene([(2, 4, 4), (2, 4, 4)], seed=5)
    t_c, seed = 0.3, 6
    config = SamplerConfig(steps=3, t_c=t_c, seed=seed)
    cached = sample_shots(model, scene, config, select=lambda k: list(range(k)), use_cache=True)
    assert cached.cache == ["rebuilt", "reused"]

    def by_hand(t_noise: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        torch.randn(SHAPE, generator=gen)                     # shot 0's noise
        history = (1 - t_noise) * cached.latents[0] + t_noise * torch.randn(SHAPE, generator=gen)
        noise = torch.randn(SHAPE, generator=gen)
        small = Scene(scene.global_text, [Shot(scene.shots[0].text, history), scene.shots[1]])

        def velocity(t, z):
            batch = collate([Scene(small.global_text, [small.shots[0], Shot(small.shots[1].text, z[1])])], CFG)
            with torch.no_grad():
                return {1: model(batch, torch.tensor([[t_c, t]], dtype=torch.float32))[0][1]}

        return euler(config, {1: noise}, velocity)[1]

    torch.testing.assert_close(cached.latents[1], by_hand(t_c), atol=1e-5, rtol=0)
    assert (cached.latents[1] - by_hand(0.6)).abs().max() > 1e-3   # a wrong t_c would not match


def test_a_conditioned_shot_reaches_the_model():
    """The free shot copies what the model sees of the given shot: a shortcut that only returns
    the condition as output (never putting it into the model's input) fails."""
    given = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    for t_c in (0.0, 0.4):
        oracle = Oracle(A, B, follow_shot=0)
        config = SamplerConfig(steps=3, t_c=t_c, seed=8)
        out = sample(oracle, scene_of(2), config, "conditioned", given={0: given})
        assert torch.equal(out[0], given)
        for t, seen in oracle.calls:
            assert abs(float(t[0, 0]) - t_c) < 1e-7                     # the model is told the condition's t
        seen_given = oracle.calls[0][1][0]
        if t_c == 0.0:
            torch.testing.assert_close(seen_given, given, atol=0, rtol=0)
        torch.testing.assert_close(out[1], seen_given, atol=1e-5, rtol=0)
        assert all(torch.equal(c[1][0], seen_given) for c in oracle.calls)   # held fixed
