"""Shot-by-shot generation with a history pool: each new shot sees the earlier shots most related to it.

    feats = prompt_features(text, captions)                 # (N, Dt) pooled prompt features
    select = lambda k: relevant_history(feats, k, cap=model.cfg.max_shots - 1)
    result = sample_shots(model, scene, config, select)     # scene: global prompt + N shots, any N

model/sampling.py's autoregressive mode conditions shot k on *all* shots < k, which stops at
max_shots. Here `select(k)` names the history of shot k (earlier shots, chronological), so a
scene can be longer than the model's context: the history pool keeps the `cap` earlier shots
whose prompts are most similar to shot k's prompt (cosine of the text encoder's pooled
features; a CLIP text encoder when the checkpoint's text encoder is open_clip), ties going to
the more recent shot, and shows them to the model in their original order. While every earlier
shot fits (k <= cap) the history is all of them, and the result equals
`model.sampling.sample(mode="autoregressive")` exactly (same noise draws, same order).

Each shot k is denoised in a small scene [global prompt, history shots re-noised to t_c, shot k]
(RoPE positions restart from that small scene: the model only knows relative layouts). A
history shot is re-noised to t_c once, right after it is generated, with the sampler's
generator, so its noisy version is the same whichever later shot uses it.

KV-cache (context-causal models, use_cache=True): the K/V of the global prompt and the history
are computed once per shot and reused at every Euler step. The K/V of a group depend only on
the groups before it, so the cache of the previous shot is *reused* when its history is a
prefix of the new history (the common case: history = all earlier shots) and only the new
history shots are appended; when the pool picks a different list, the cache is rebuilt from
the global prompt (one forward over the history, still not one per step). Bidirectional
models (or use_cache=False) recompute the history at every step.

Shots in `given` (clean latents, e.g. a t=0 image condition) are not denoised: they are taken
as they are and become history like a generated shot. Their noise is still drawn, so adding a
condition does not change the noise of the other shots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from model import LCT, SamplerConfig, Scene, Shot
from model.sampling import branches, euler, guide, draw_noise, put_latent
from model.text import TextEncoder

SHOT_CUT = "[SHOT CUT]"

Select = Callable[[int], list[int]]
OnStep = Callable[[int, int, int], None]     # (shot k, Euler steps done, steps)


def prompt_features(text: TextEncoder, prompts: list[str]) -> Tensor:
    """(N, Dt) pooled text features of the prompts, "[SHOT CUT]" stripped (it is shared by all)."""
    plain = [p.strip().removeprefix(SHOT_CUT).strip() for p in prompts]
    return text(plain).pooled.float().cpu()


def recent_history(k: int, cap: int) -> list[int]:
    """The `cap` shots just before shot k (what a plain sliding window would show)."""
    return list(range(max(0, k - cap), k))


def relevant_history(feats: Tensor, k: int, cap: int) -> list[int]:
    """Earlier shots for shot k: all when they fit (k <= cap), else the `cap` most similar prompts.

    feats (N, D) prompt features; similarity = cosine to feats[k], ties to the more recent
    shot; returned in chronological order.
    """
    if cap < 0:
        raise ValueError(f"history cap must be >= 0, got {cap}")
    if not 0 <= k < len(feats):
        raise ValueError(f"shot {k} is not among the {len(feats)} prompts")
    if k <= cap:
        return list(range(k))
    sims = F.cosine_similarity(feats[:k], feats[k][None], dim=-1)        # (k,)
    scores = [round(float(s), 6) for s in sims]                            # stable across devices
    best = sorted(range(k), key=lambda j: (-scores[j], -j))[:cap]
    return sorted(best)


@dataclass
class ShotsResult:
    latents: list[Tensor]                    # per shot (C, F, H, W), on the model's device
    history: list[list[int]] = field(default_factory=list)    # per shot: the shots it saw
    seconds: list[float] = field(default_factory=list)        # per shot: wall time
    cache: list[str] = field(default_factory=list)            # per shot: none|reused|rebuilt|given


def _check_history(hist: list[int], k: int, cap: int) -> None:
    if hist != sorted(set(hist)) or any(not 0 <= j < k for j in hist) or len(hist) > cap:
        raise ValueError(
            f"history of shot {k} must be at most {cap} distinct earlier shots in order, got {hist}"
        )


@torch.no_grad()
def sample_shots(
    model: LCT,
    scene: Scene,
    config: SamplerConfig,
    select: Select,
    given: dict[int, Tensor] | None = None,
    use_cache: bool = True,
    on_step: OnStep | None = None,
) -> ShotsResult:
    """Generate the shots of `scene` one by one; shot k sees the shots select(k), re-noised to t_c.

    scene: global prompt + any number of shots (prompts and latent shapes; latent values ignored).
    given: shot index -> clean latent used as that shot instead of generating it.
    """
    device = next(model.parameters()).device
    cached = use_cache and model.cfg.attention == "context_causal"
    cap = model.cfg.max_shots - 1
    given = dict(given or {})
    gen = torch.Generator().manual_seed(config.seed)
    S, patch = len(scene.shots), model.cfg.patch
    result = ShotsResult(latents=[])
    noisy: list[Tensor] = []                 # shot j re-noised to t_c, made once after shot j
    cache_hist: list[int] | None = None      # the history (shot indices) the caches hold
    caches = None
    for k in range(S):
        start = time.perf_counter()
        hist = list(select(k))
        _check_history(hist, k, cap)
        noise = draw_noise(scene.shots[k].latent.shape, gen, device)
        if k in given:
            clean, event, hist = given[k].to(device), "given", []
        else:
            # 1. A small scene [global, history at t_c, shot k]: history latents go in as Shots.
            shots = [Shot(scene.shots[j].text, noisy[j], scene.shots[j].text_mask) for j in hist]
            prefix = Scene(scene.global_text, shots + [scene.shots[k]], scene.global_mask)
            batches = branches(model, prefix, config)
            h = len(hist)                                        # shot k is shot h of `prefix`
            t_vec = torch.full((1, h + 1), config.t_c, device=device)

            # 2. The cache of [global, history]: reuse the previous one if it is a prefix.
            event = "none"
            if cached:
                event = "reused"
                if cache_hist is None or hist[: len(cache_hist)] != cache_hist:
                    caches = [model.prefill(b, t_vec, groups=1) for b in batches]
                    cache_hist, event = [], "rebuilt"
                for _ in range(len(cache_hist), h):
                    caches = [model.extend_cache(b, t_vec, c) for b, c in zip(batches, caches)]
                cache_hist = hist

            # 3. Denoise shot k against the fixed history.
            step = [0]

            def velocity(t: float, z: dict[int, Tensor]) -> dict[int, Tensor]:
                t_vec[0, h] = t
                outs = []
                for b, batch in enumerate(batches):
                    put_latent(batch, h, z[h], patch)
                    outs.append(model.forward_with_cache(batch, t_vec, caches[b]) if cached
                                else model(batch, t_vec)[0][h])
                step[0] += 1
                if on_step:
                    on_step(k, step[0], config.steps)
                return {h: guide(outs, config.cfg_scale)}

            clean = euler(config, {h: noise}, velocity)[h]
        result.latents.append(clean)
        if k < S - 1:                                            # 4. history from now on
            noisy.append((1 - config.t_c) * clean + config.t_c * draw_noise(clean.shape, gen, device))
        result.history.append(hist)
        result.cache.append(event)
        result.seconds.append(time.perf_counter() - start)
    return result
