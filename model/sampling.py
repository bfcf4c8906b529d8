"""Rectified-flow sampling of LCT scenes: Euler steps, timestep shift, classifier-free guidance.

Flow convention (training/ uses the same): z_t = (1 - t) z0 + t eps, the model predicts
v = eps - z0, so dz/dt = v and one Euler step from t to t' < t is z <- z + (t' - t) v; t goes
from 1 (pure noise) to 0 (clean). The grid is shifted SD3-style, t' = s t / (1 + (s - 1) t),
so s > 1 spends more steps at high noise.

Classifier-free guidance: v = v_uncond + scale (v_text - v_uncond), the unconditional branch
being the same scene with every prompt (global and shots) replaced by one `negative` (T, Dt):
- a negative prompt's features (`lct generate --negative-prompt`, the scene file's `negative`),
  the same features for every group, the prompt as written (no "[SHOT CUT]" added);
- when none is given, `default_negative(cfg)`: lct's MMDiT uses the null prompt, a zero-length
  prompt (0, Dt) (the same thing as zero features with an all-false mask: the group keeps no
  text tokens and its pooled text is the zero vector); a Wan backbone uses the empty string's
  features, as diffusers' WanPipeline does (negative_prompt ""), the unconditional branch the
  base model was pre-trained with. Training's prompt dropout (training/train.py) replaces
  prompts by the very same `negative_features(cfg, text)`, so inference's unconditional branch
  is the one that was trained, for either backbone.

Modes (all deterministic under SamplerConfig.seed, noise drawn on the CPU generator):
    joint           every shot starts from noise and shares t.
    conditioned     shots in `given` are clean latents, re-noised once to t_c (t_c = 0: used
                    as is), held fixed at timestep t_c while the other shots are denoised.
    autoregressive  shot by shot: shots < k, re-noised once to t_c, condition shot k. A
                    context-causal model caches their K/V (LCT.prefill / extend_cache);
                    otherwise (or use_cache=False) the history is recomputed at every step.
Scene shots give the prompts and the latent shapes (C, F, H, W); their latent values are
ignored (pass e.g. torch.zeros(C, F, H, W)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from .config import LCTConfig
from .lct import LCT, Batch, Scene, Shot, collate, patchify
from .prompt import encode_prompts
from .text import TextEncoder

Mode = Literal["joint", "conditioned", "autoregressive"]
MODES: tuple[str, ...] = ("joint", "conditioned", "autoregressive")


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 30          # Euler steps from t = 1 to t = 0
    shift: float = 1.0       # SD3 timestep shift s (1 = uniform grid)
    cfg_scale: float = 1.0   # classifier-free guidance; 1 = off (no null-text pass)
    t_c: float = 0.3         # timestep of conditioning shots (given or history)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"SamplerConfig.steps must be a positive int, got {self.steps!r}")
        if self.shift <= 0:
            raise ValueError(f"SamplerConfig.shift must be > 0 (1 = no shift), got {self.shift}")
        if not 0.0 <= self.t_c < 1.0:
            raise ValueError(f"SamplerConfig.t_c must be in [0, 1) (0 = clean), got {self.t_c}")


def timesteps(steps: int, shift: float = 1.0) -> Tensor:
    """(steps + 1,) float64 grid from 1 to 0, shifted: t' = s t / (1 + (s - 1) t)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def default_negative(cfg) -> str | None:
    """The negative prompt when none is given: None (the null prompt) for lct's MMDiT (LCTConfig), the
    empty string for a Wan backbone (WanConfig), as diffusers' WanPipeline."""
    return None if isinstance(cfg, LCTConfig) else ""


def negative_features(cfg, text: TextEncoder, negative: str | None = None) -> Tensor | None:
    """(T, Dt) features of `negative` (default: default_negative(cfg)) on the encoder's device; None = null prompt."""
    prompt = default_negative(cfg) if negative is None else negative
    return None if prompt is None else encode_prompts(text, [prompt])[0]


def null_scene(scene: Scene, negative: Tensor | None = None) -> Scene:
    """The unconditional scene: every prompt replaced by `negative` (T, Dt), or by the null (zero-length)
    prompt when None. Latents are kept."""
    text = scene.global_text.new_zeros(0, scene.global_text.shape[-1]) if negative is None else negative
    text = text.to(scene.global_text.device, scene.global_text.dtype)
    return Scene(global_text=text, shots=[Shot(text=text, latent=s.latent) for s in scene.shots])


@torch.no_grad()
def sample(
    model: LCT,
    scene: Scene,
    config: SamplerConfig = SamplerConfig(),
    mode: Mode = "joint",
    given: dict[int, Tensor] | None = None,
    use_cache: bool = True,
    negative: Tensor | None = None,
) -> list[Tensor]:
    """Generate the latents (C, F, H, W) of every shot of `scene`, in shot order.

    given: shot index -> clean latent, for mode="conditioned" (returned unchanged).
    use_cache: autoregressive mode only; ignored (recompute) when the model is bidirectional.
    negative: (T, Dt) prompt features of the unconditional branch (cfg_scale != 1); None = the null prompt.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    given = dict(given or {})
    if given and mode != "conditioned":
        raise ValueError(f"given shots {sorted(given)} need mode='conditioned', got mode={mode!r}")
    for i, latent in given.items():
        if not 0 <= i < len(scene.shots):
            raise ValueError(f"given shot {i}: the scene has shots 0..{len(scene.shots) - 1}")
        if latent.shape != scene.shots[i].latent.shape:
            raise ValueError(
                f"given shot {i}: the latent must have the shot's shape "
                f"{tuple(scene.shots[i].latent.shape)}, got {tuple(latent.shape)}"
            )
    if mode == "autoregressive":
        return sample_shots(model, scene, config, select=lambda k: list(range(k)), use_cache=use_cache,
                            negative=negative).latents
    return _sample_scene(model, scene, config, given, negative)


Velocity = Callable[[float, dict[int, Tensor]], dict[int, Tensor]]
Select = Callable[[int], list[int]]          # shot k -> the earlier shots it sees (chronological)
OnStep = Callable[[int, int, int], None]     # (shot k, Euler steps done, steps)


def euler(config: SamplerConfig, z: dict[int, Tensor], velocity: Velocity) -> dict[int, Tensor]:
    """Integrate the free shots z from t = 1 to 0; velocity(t, z) -> v for the same shots."""
    ts = timesteps(config.steps, config.shift).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = velocity(t, z)
        z = {i: z[i] + (t_next - t) * v[i].to(z[i].dtype) for i in z}
    return z


def guide(outs: list[Tensor], scale: float) -> Tensor:
    """outs = [v_text] or [v_text, v_null] -> guided velocity."""
    return outs[0] if len(outs) == 1 else outs[1] + scale * (outs[0] - outs[1])


def branches(model: LCT, scene: Scene, config: SamplerConfig, negative: Tensor | None = None) -> list[Batch]:
    """One collated batch per guidance branch: [text] or [text, negative (None: null) text]."""
    device = next(model.parameters()).device
    scenes = [scene] if config.cfg_scale == 1.0 else [scene, null_scene(scene, negative)]
    return [collate([s], model.cfg).to(device) for s in scenes]


def put_latent(batch: Batch, shot: int, latent: Tensor, patch: tuple[int, int, int]) -> None:
    """Write shot `shot`'s latent (C, F, H, W) into the video tokens of a one-scene batch."""
    assert latent.shape == batch.latent_shapes[0][shot], (latent.shape, batch.latent_shapes[0][shot])
    batch.vid[0, batch.vid_group[0] == shot + 1] = patchify(latent, patch).to(batch.vid.dtype)


def draw_noise(shape: torch.Size, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=gen).to(device)


def _sample_scene(model: LCT, scene: Scene, config: SamplerConfig, given: dict[int, Tensor],
                  negative: Tensor | None = None) -> list[Tensor]:
    """Joint / conditioned: one Euler loop over the whole scene, given shots held at t_c."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    noise = [draw_noise(s.latent.shape, gen, device) for s in scene.shots]  # one per shot, in order
    S, patch = len(scene.shots), model.cfg.patch
    free = [i for i in range(S) if i not in given]
    batches = branches(model, scene, config, negative)
    for i, x0 in given.items():                                  # re-noise once, then fixed
        fixed = (1 - config.t_c) * x0.to(device) + config.t_c * noise[i]
        for batch in batches:
            put_latent(batch, i, fixed, patch)
    t_vec = torch.full((1, S), config.t_c, device=device)       # (1, S), free shots set per step

    def velocity(t: float, z: dict[int, Tensor]) -> dict[int, Tensor]:
        t_vec[0, free] = t
        for batch in batches:
            for i in free:
                put_latent(batch, i, z[i], patch)
        outs = [model(batch, t_vec)[0] for batch in batches]     # per branch: S velocities
        return {i: guide([o[i] for o in outs], config.cfg_scale) for i in free}

    z = euler(config, {i: noise[i] for i in free}, velocity)
    return [given[i].clone() if i in given else z[i] for i in range(S)]


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
    negative: Tensor | None = None,
) -> ShotsResult:
    """Generate the shots of `scene` one by one; shot k sees the shots select(k), re-noised to t_c.

    mode="autoregressive" is select(k) = every shot < k; training/history.py's pool picks fewer,
    so a scene may be longer than context_shots.

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

    scene: global prompt + any number of shots (prompts and latent shapes; latent values ignored).
    given: shot index -> clean latent used as that shot instead of generating it.
    negative: (T, Dt) prompt features of every group of the unconditional branch; None = the null prompt.
    """
    device = next(model.parameters()).device
    cached = use_cache and model.cfg.attention == "context_causal"
    cap = model.cfg.context_shots - 1
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
            batches = branches(model, prefix, config, negative)
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
