"""Model speed on CPU: MFU of an lct-small training step, SDPA vs naive attention, KV-cache.

Measured side by side in one run (fp32, all cores, fixed seed); every time is the median of a
few calls after one warm-up call, except the matmul reference, which is the best of several:

    matmul peak   torch.mm of two 2048 x 2048 fp32 matrices: this machine's reachable FLOP/s
    train step    forward + backward of `lct-small` on 2 scenes x 3 shots, each shot 16 text
                  tokens x 384 and an (C=3, F=8, 32, 32) pixel-codec latent (L = 64 + 1536 =
                  1600 tokens per scene). FLOPs are counted analytically from the config and
                  the token counts (every linear layer per stream incl. adaLN, QK^T and AV over
                  the joint sequence; forward = 2 x MACs, backward = 2 x forward) and checked
                  against torch.utils.flop_counter.FlopCounterMode on the same step.
                  MFU = achieved FLOP/s / matmul peak.
    attention     F.scaled_dot_product_attention with a dense (B, 1, L, L) boolean mask
                  (context-causal, 6 shots, L = 2928) vs softmax(QK^T / sqrt(d) + mask) V
                  written out, at the lct-small heads (4 x 64): time ratio and max abs diff.
    kv-cache      model.sampling.sample(mode="autoregressive") of 2 / 4 / 8 shots of a
                  context-causal lct-small (2 Euler steps, 4x32x32 latents, history at t_c = 0.3)
                  with the KV-cache vs recomputing the history: time ratio (median of 3 rounds
                  after a warm-up, each round running every cell; outputs compared). Skipped,
                  with a line saying so, while model/sampling.py does not exist.

    .venv/bin/python bench/model.py
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

# This file is bench/model.py: drop its folder from the path so `model` is the package, not us.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from model import LCT, PRESETS, Batch, LCTConfig, Scene, Shot, collate  # noqa: E402
from training.metrics import train_step_flops  # noqa: E402

REPEATS = 3


def median_seconds(run, repeats: int = REPEATS) -> float:
    """Median wall seconds of `run()` over `repeats` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(n: int = 2048, repeats: int = 8) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n fp32 torch.mm (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def trained_like(model: LCT) -> LCT:
    """Give the zero-initialised tensors (adaLN-Zero, output layer, biases) N(0, 0.02) values,
    so that outputs and gradients are not identically zero (the FLOPs are the same either way)."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.02)
    return model


# FlopCounterMode has no formula for the CPU SDPA kernel; give it torch's own SDPA formulas.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def make_scene(cfg: LCTConfig, frames: list[int], text_tokens: int = 16, size: int = 32) -> Scene:
    text = lambda: torch.randn(text_tokens, cfg.text_dim)  # noqa: E731
    shots = [Shot(text(), torch.randn(cfg.latent_channels, f, size, size)) for f in frames]
    return Scene(global_text=text(), shots=shots)


def bench_train_step(peak: float) -> None:
    cfg = PRESETS["lct-small"]
    model = trained_like(LCT(cfg))
    batch = collate([make_scene(cfg, [8, 8, 8]) for _ in range(2)], cfg)
    t = torch.rand(2, 3)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = sum(v.square().mean() for scene in model(batch, t) for v in scene)
        loss.backward()

    seconds = median_seconds(step)
    analytic = train_step_flops(cfg, batch)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        step()
    counted = counter.get_total_flops()
    L = batch.txt.shape[1] + batch.vid.shape[1]
    print(f"train step  lct-small, B=2 x 3 shots, L={L} tokens/scene, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params")
    print(f"  FLOPs     analytic {analytic / 1e9:.1f} G, FlopCounterMode {counted / 1e9:.1f} G, "
          f"analytic/counted {analytic / counted:.3f}")
    print("            (the counter charges the attention backward 2.5x its forward: the flash kernel "
          "recomputes QK^T)")
    print(f"  time      {seconds * 1e3:.0f} ms (median of {REPEATS}) -> "
          f"{analytic / seconds / 1e9:.1f} GFLOP/s (analytic FLOPs)")
    print(f"  MFU       {analytic / seconds / peak:.1%} of the measured matmul peak")


def attention_mask(group: Tensor, mode: str) -> Tensor:
    """The dense (B, 1, L, L) bool mask the model used before shot-block attention (bench/attention.py)."""
    q, k = group[:, :, None], group[:, None, :]
    allowed = (k >= 0) & (k <= q) if mode == "context_causal" else k >= 0
    return (allowed | torch.eye(group.shape[1], dtype=torch.bool))[:, None]


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, bias = 0 where mask is True and -inf elsewhere."""
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, -math.inf)  # (B, 1, L, L)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias  # (B, heads, L, L)
    return scores.softmax(dim=-1) @ v                             # (B, heads, L, head_dim)


def bench_attention() -> None:
    cfg = PRESETS["lct-small"].with_(attention="context_causal")
    batch = collate([make_scene(cfg, [8, 8, 8, 8, 8, 4])], cfg)
    group = torch.cat([batch.txt_group, batch.vid_group], dim=1)  # (B, L)
    mask = attention_mask(group, cfg.attention)                  # (B, 1, L, L) bool
    B, L = group.shape
    q, k, v = (torch.randn(B, cfg.heads, L, cfg.head_dim) for _ in range(3))
    with torch.no_grad():
        sdpa = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        naive = median_seconds(lambda: naive_attention(q, k, v, mask))
        diff = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask) - naive_attention(q, k, v, mask))
    print(f"attention   B={B}, heads={cfg.heads}, head_dim={cfg.head_dim}, L={L}, context-causal mask "
          f"({mask.float().mean():.0%} allowed)")
    print(f"  time      SDPA {sdpa * 1e3:.1f} ms, naive {naive * 1e3:.1f} ms, naive/SDPA {naive / sdpa:.2f}x")
    print(f"  equal     max abs diff {diff.abs().max():.2e}, "
          f"allclose(atol=1e-5) {torch.allclose(diff, torch.zeros_like(diff), atol=1e-5)}")


def bench_kv_cache(steps: int = 2, frames: int = 4) -> None:
    if importlib.util.find_spec("model.sampling") is None:
        print("kv-cache    skipped: awaits the autoregressive sampler (no model/sampling.py yet)")
        return
    from model.sampling import SamplerConfig, sample

    cfg = PRESETS["lct-small"].with_(attention="context_causal")
    model = trained_like(LCT(cfg)).eval()
    config = SamplerConfig(steps=steps)

    def generate(scene: Scene, use_cache: bool) -> list[Tensor]:
        return sample(model, scene, config, mode="autoregressive", use_cache=use_cache)

    generate(make_scene(cfg, [frames] * 2), True)                # warm-up
    print(f"kv-cache    lct-small context-causal, autoregressive, {steps} Euler steps per shot, shots "
          f"of 16 text + {frames}x32x32 latent ({frames * 64 + 16} tokens), median of {REPEATS} "
          "interleaved rounds")
    scenes = {shots: make_scene(cfg, [frames] * shots) for shots in (2, 4, 8)}
    times = {(shots, c): [] for shots in scenes for c in (False, True)}
    outs = {}
    for _ in range(REPEATS):                                     # round r runs every cell once
        for shots, scene in scenes.items():
            for use_cache in (False, True):
                start = time.perf_counter()
                outs[shots, use_cache] = generate(scene, use_cache)
                times[shots, use_cache].append(time.perf_counter() - start)
    for shots in scenes:
        recompute, cached = (statistics.median(times[shots, c]) for c in (False, True))
        diff = max((a - b).abs().max().item() for a, b in zip(outs[shots, True], outs[shots, False]))
        print(f"  {shots} shots   recompute {recompute:.2f} s, cache {cached:.2f} s, "
              f"recompute/cache {recompute / cached:.2f}x, max abs diff {diff:.1e}")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    peak = matmul_flops_per_second()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"load average at start {os.getloadavg()[0]:.2f} (other processes share these cores)")
    print(f"matmul peak 2048^3 torch.mm: {peak / 1e9:.1f} GFLOP/s (best of 8)")
    bench_train_step(peak)
    bench_attention()
    bench_kv_cache()
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
