"""How long lct-demo trains before its samples look like the data: the demo's budget vs what it needs.

The demo's generated sheets are noise in a scene-like palette. Is that the demo's films (hard
textures, 26 training scenes) or the training budget? This bench takes the films out of it: an
*infinite* and trivially easy distribution of 2-shot scenes, drawn fresh every step, in pixel
space at the demo's size (16x16, one frame):

    a flat background of a random colour + a 5x5 square of another random colour, both shared
    by the scene's two shots; the square's position differs per shot

lct-demo (the demo's model, model.PRESETS) trains from scratch on it in a plain PyTorch loop
(model/ and training/objective.py only: per-shot logit-normal timesteps, the flow objective, AdamW),
and at a few step counts samples 8 held-out scenes jointly (Euler, 16 steps, as the demo). Each
checkpoint prints, side by side with fresh real scenes of the same distribution:

    flat share    pixels within 0.1 (of the [-1, 1] range, per channel) of their image's median
                  colour: real ~0.9 (all but the square); noise in the right palette scores low
    hf ratio      high-frequency energy (image minus its 3x3 box blur, mean square) of generated
                  shots / real shots: 1 = as smooth as the data, noise >> 1
    consistency   lct eval's normalised consistency of the shots' mean colours (training/consistency.py):
                  1 - within-scene / between-scene distance (1 = a scene's shots agree, 0 = no closer
                  than shots of other scenes; real 1.0: the square's position leaves the mean alone)

and the scene-samples seen (steps x batch) next to the demo's (400 steps x 4 scenes). Timings are
wall-clock on this machine (noisy when shared; the load average is printed).

    .venv/bin/python bench/convergence.py [--steps 250,500,1000,2000] [--batch 8] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model import LCT, PRESETS, Scene, Shot, collate  # noqa: E402
from model.sampling import timesteps  # noqa: E402
from training.consistency import consistency  # noqa: E402
from training.objective import add_noise, model_timesteps  # noqa: E402

DEMO_SCENE_SAMPLES = 400 * 4          # the demo's training: 400 steps x micro_batch 4 (training/presets.py)
SIZE, SQUARE, SHOTS = 16, 5, 2


def scene(gen: torch.Generator) -> list[torch.Tensor]:
    """One scene: SHOTS latents (3, 1, SIZE, SIZE) in [-1, 1] sharing background and square colours."""
    background, square = torch.rand(2, 3, 1, 1, 1, generator=gen) * 2 - 1
    shots = []
    for _ in range(SHOTS):
        z = background.expand(3, 1, SIZE, SIZE).clone()
        y, x = torch.randint(0, SIZE - SQUARE + 1, (2,), generator=gen).tolist()
        z[:, :, y:y + SQUARE, x:x + SQUARE] = square
        shots.append(z)
    return shots


def flat_share(z: torch.Tensor) -> float:
    """Share of pixels whose every channel is within 0.1 of the image's per-channel median."""
    median = z.flatten(1).median(dim=1).values[:, None, None, None]
    return float(((z - median).abs() <= 0.1).all(dim=0).float().mean())


def hf_energy(z: torch.Tensor) -> float:
    """Mean square of z minus its 3x3 box blur (replicate padding): fine detail and noise."""
    x = z[:, 0][None]                                               # (1, 3, H, W)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return float(((x - blur) ** 2).mean())


@torch.no_grad()
def sample(model: LCT, text: torch.Tensor, n: int, steps: int = 16) -> list[list[torch.Tensor]]:
    """n scenes generated jointly from their own noise (Euler on the uniform grid, t from 1 to 0)."""
    model.eval()
    grid = timesteps(steps)
    out = []
    for k in range(n):
        gen = torch.Generator().manual_seed(10_000 + k)
        zs = [torch.randn(3, 1, SIZE, SIZE, generator=gen) for _ in range(SHOTS)]
        for j in range(steps):
            batch = collate([Scene(text, [Shot(text, z) for z in zs])], model.cfg)
            v = model(batch, model_timesteps(torch.full((1, SHOTS), float(grid[j])), "cpu"))
            zs = [z + float(grid[j + 1] - grid[j]) * v[0][i].float() for i, z in enumerate(zs)]
        out.append([z.clamp(-1, 1) for z in zs])
    model.train()
    return out


def describe(scenes: list[list[torch.Tensor]]) -> tuple[float, float, float]:
    shots = [z for s in scenes for z in s]
    colours = [[z.mean(dim=(1, 2, 3)).numpy() for z in s] for s in scenes]     # the eval's descriptor: mean colour
    return sum(map(flat_share, shots)) / len(shots), sum(map(hf_energy, shots)) / len(shots), consistency(colours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="250,500,1000,2000", help="Step counts to sample at (comma list).")
    parser.add_argument("--batch", type=int, default=8, help="Scenes per step.")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate.")
    parser.add_argument("--samples", type=int, default=8, help="Scenes sampled per checkpoint.")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads.")
    args = parser.parse_args()
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    cfg = PRESETS["lct-demo"]
    model = LCT(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    text = torch.randn(4, cfg.text_dim, generator=torch.Generator().manual_seed(1))   # one fixed prompt
    data, noise = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    real_flat, real_hf, real_consistency = describe([scene(torch.Generator().manual_seed(20_000 + k)) for k in range(64)])
    print(f"lct-demo ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), {SIZE}x{SIZE}, "
          f"{SHOTS}-shot scenes, batch {args.batch}, lr {args.lr}; demo budget: {DEMO_SCENE_SAMPLES} scene-samples")
    print(f"real scenes: flat share {real_flat:.3f}, hf energy {real_hf:.4f}, consistency {real_consistency:.3f}")
    print(f"{'step':>6} {'scene-samples':>13} {'x demo':>7} {'loss':>7} {'flat share':>10} "
          f"{'(x real)':>8} {'hf ratio':>8} {'consistency':>11} {'train s':>8}")
    t0, losses = time.perf_counter(), []
    for step in range(1, checkpoints[-1] + 1):
        latents = [scene(data) for _ in range(args.batch)]
        t = torch.sigmoid(torch.randn(args.batch, SHOTS, generator=noise))
        noisy, targets = add_noise(latents, t, noise)
        batch = collate([Scene(text, [Shot(text, z) for z in shots]) for shots in noisy], cfg)
        v = model(batch, model_timesteps(t, "cpu"))
        loss = sum(((v[b][i] - targets[b][i]) ** 2).mean() for b in range(args.batch) for i in range(SHOTS))
        loss = loss / (args.batch * SHOTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step in checkpoints:
            train_s = time.perf_counter() - t0
            flat, hf, agree = describe(sample(model, text, args.samples))
            t0 = time.perf_counter() - train_s                          # sampling is not training time
            seen = step * args.batch
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"{step:>6} {seen:>13} {seen / DEMO_SCENE_SAMPLES:>7.1f} {recent:>7.4f} {flat:>10.3f} "
                  f"{flat / real_flat:>8.2f} {hf / real_hf:>8.2f} {agree:>11.3f} {train_s:>8.0f}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
