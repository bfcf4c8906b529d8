"""Generation speed on CPU: seconds per generated shot, autoregressive with KV-cache vs recompute, and joint.

Measured side by side in one run (fp32, all cores, fixed seed) on a context-causal `lct-small`
(seeded random weights: speed does not depend on them), shots of 16 text tokens x 384 and a
(C=3, F=4, 32, 32) pixel latent (4 x 8 x 8 = 256 video tokens per shot), STEPS Euler steps,
no guidance, history at t_c = 0.3:

    autoregressive  model.sampling.sample_shots (the `lct generate` loop), history = every
                    earlier shot: with the KV-cache (history K/V computed once per shot, reused
                    at each step) vs recomputing the history at every step.
    pool            8 shots on a model with context_shots = 4: the history pool keeps 3 earlier
                    shots, so the cache is rebuilt whenever the chosen list stops being a prefix.
    joint           model.sampling.sample(mode="joint"): all shots denoised together.

Every cell is the best (minimum) of ROUNDS rounds, each round running every cell, after one
warm-up call of each 2-shot cell: on a shared 2-core machine other processes inflate single
runs by up to 50x (measured), and the minimum is the run they disturbed least. Cache and
recompute outputs are compared (max abs diff). Seconds per shot = wall time / shots.

    .venv/bin/python bench/generate.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# This file is bench/generate.py and bench/ holds model.py: drop the folder so `model` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import LCT, PRESETS, SamplerConfig, Scene, Shot, sample  # noqa: E402
from model.sampling import sample_shots  # noqa: E402
from training.history import recent_history, relevant_history  # noqa: E402

STEPS = 2
ROUNDS = 3
SHOTS = (2, 4, 8)
LATENT = (3, 4, 32, 32)


def make_scene(shots: int, seed: int = 0) -> Scene:
    gen = torch.Generator().manual_seed(seed)
    return Scene(torch.randn(24, 384, generator=gen),
                 [Shot(torch.randn(16, 384, generator=gen), torch.zeros(LATENT)) for _ in range(shots)])


def make_model(context_shots: int = 9) -> LCT:
    """Context-causal lct-small with seeded N(0, 0.02) weights (a fresh LCT outputs v = 0: adaLN-Zero)."""
    model = LCT(PRESETS["lct-small"].with_(attention="context_causal", context_shots=context_shots)).eval()
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0.0, 0.02, generator=gen)
    return model


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"load average at start {os.getloadavg()[0]:.2f} (other processes share these cores)")
    model, small = make_model(), make_model(context_shots=4)
    config = SamplerConfig(steps=STEPS, cfg_scale=1.0, t_c=0.3, seed=0)
    feats = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))   # pool: 8 shots, cap 3
    cells = {}                                                                # name -> (shots, run)
    for shots in SHOTS:
        scene, every = make_scene(shots), (lambda n: lambda k: recent_history(k, n))(shots)
        cells[(shots, "cache")] = lambda s=scene, f=every: sample_shots(model, s, config, f, use_cache=True)
        cells[(shots, "recompute")] = lambda s=scene, f=every: sample_shots(model, s, config, f, use_cache=False)
        cells[(shots, "joint")] = lambda s=scene: sample(model, s, config, mode="joint")
    pool_scene, pool = make_scene(8), (lambda k: relevant_history(feats, k, 3))
    cells[("pool", "cache")] = lambda: sample_shots(small, pool_scene, config, pool, use_cache=True)
    cells[("pool", "recompute")] = lambda: sample_shots(small, pool_scene, config, pool, use_cache=False)

    # Warm up, then ROUNDS rounds each running every cell (load changes hit all cells alike).
    for name, run in cells.items():
        if name[0] == 2:
            run()
    times = {name: [] for name in cells}
    outputs = {}
    for _ in range(ROUNDS):
        for name, run in cells.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    sec = {name: min(ts) for name, ts in times.items()}
    latents = {n: o if isinstance(o, list) else o.latents for n, o in outputs.items()}

    print(f"lct-small context-causal, {STEPS} Euler steps, latent {LATENT} per shot "
          f"(256 video + 16 text tokens), best of {ROUNDS} rounds\n")
    header = f"{'scene':<22}{'AR cache s/shot':>16}{'AR recompute s/shot':>21}{'joint s/shot':>14}" \
             f"{'recompute/cache':>17}{'AR cache/joint':>16}{'max |diff|':>12}"
    print(header)
    print("-" * len(header))
    for shots in SHOTS:
        c, rc, j = sec[(shots, "cache")], sec[(shots, "recompute")], sec[(shots, "joint")]
        diff = max_diff(latents[(shots, "cache")], latents[(shots, "recompute")])
        print(f"{f'{shots} shots':<22}{c / shots:>16.3f}{rc / shots:>21.3f}{j / shots:>14.3f}"
              f"{rc / c:>16.2f}x{c / j:>15.2f}x{diff:>12.1e}")
    c, rc = sec[("pool", "cache")], sec[("pool", "recompute")]
    diff = max_diff(latents[("pool", "cache")], latents[("pool", "recompute")])
    print(f"{'8 shots, pool cap 3':<22}{c / 8:>16.3f}{rc / 8:>21.3f}{'-':>14}{rc / c:>16.2f}x{'-':>16}{diff:>12.1e}")
    pooled = outputs[("pool", "cache")]
    print(f"  pool histories {pooled.history}\n  cache events   {pooled.cache}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
