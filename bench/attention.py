"""Attention of a long scene: the old dense (B, 1, L, L) mask vs shot-block attention.

Forward + backward of the joint attention alone (q, k, v with gradients, lct-small heads 4 x 64,
fp32, CPU) on one long scene, in two modes:

    context_causal   8 shots, the mask is a block lower triangle of groups
    padded           a batch of 2 bidirectional scenes, the second 3 shots shorter (padding)

    dense   F.scaled_dot_product_attention with the boolean mask model/lct.py used to build
    block   model.attention (sort by group once, one unmasked SDPA per group block)

Each cell runs in its own child process so that its memory high-water mark is its own: peak
RSS during the step minus the RSS before it (after q, k, v and a 64-token warm-up; the extra
memory attention needs, transients included; noisy), and the bytes autograd saves for backward
(saved_tensors_hooks: exact, load-independent).
Time = median of 2 steps after a warm-up; the children run alternately (dense, block, dense,
block) and the ratio is taken per mode. Outputs are compared (max abs diff over real tokens).

    .venv/bin/python bench/attention.py [--frames 8] [--size 48]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model import PRESETS, Scene, Shot, collate  # noqa: E402
from model.attention import attend, plan_attention  # noqa: E402

CFG = PRESETS["lct-small"]
REPEATS = 2


def dense_mask(group: torch.Tensor, mode: str) -> torch.Tensor:
    """The (B, 1, L, L) bool mask model/lct.py built before shot-block attention."""
    q, k = group[:, :, None], group[:, None, :]
    allowed = k >= 0
    if mode == "context_causal":
        allowed = allowed & (k <= q)
    return (allowed | torch.eye(group.shape[1], dtype=torch.bool))[:, None]


def scene_groups(mode: str, frames: int, size: int) -> torch.Tensor:
    """(B, L) group ids of the benchmark batch (built by the model's own collate)."""
    cfg = CFG.with_(attention=mode if mode == "context_causal" else "bidirectional")
    text = lambda: torch.zeros(16, cfg.text_dim)  # noqa: E731
    def scene(shots: int) -> Scene:
        return Scene(text(), [Shot(text(), torch.zeros(cfg.latent_channels, frames, size, size))
                              for _ in range(shots)])
    scenes = [scene(8)] if mode == "context_causal" else [scene(8), scene(5)]
    batch = collate(scenes, cfg)
    return torch.cat([batch.txt_group, batch.vid_group], dim=1)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(kind: str, mode: str, frames: int, size: int) -> None:
    """One cell: prints {"peak": bytes, "seconds": s, "out": path} as JSON."""
    torch.manual_seed(0)
    group = scene_groups(mode, frames, size)
    B, L = group.shape
    mask_mode = "context_causal" if mode == "context_causal" else "bidirectional"
    q, k, v = (torch.randn(B, CFG.heads, L, CFG.head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, CFG.heads, L, CFG.head_dim)

    def step() -> torch.Tensor:
        if kind == "dense":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(group, mask_mode))
        else:
            out = attend(q, k, v, plan_attention(group, mask_mode))
        out.backward(grad)
        return out.detach()

    saved = []                                                    # bytes autograd keeps for backward
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.nbytes) or x, lambda x: x):
        small = attend(q[..., :64, :], k[..., :64, :], v[..., :64, :], None)  # warm-up on 64 tokens:
        small.sum().backward()                                   # loads the kernels, RSS stays low
        saved.clear()
        base = max(rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out = step()                                              # sets the high-water mark
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    path = f"/tmp/lct-bench-attention-{os.getpid()}.pt"
    torch.save({"out": out, "real": (group >= 0)}, path)
    print(json.dumps({"peak": max(peak, 0), "saved": sum(saved), "seconds": statistics.median(times), "out": path, "L": L, "B": B}))


def run_child(kind: str, mode: str, frames: int, size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--mode", mode, "--frames", str(frames), "--size", str(size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="latent frames per shot")
    parser.add_argument("--size", type=int, default=48, help="latent height = width")
    parser.add_argument("--child", choices=["dense", "block"])
    parser.add_argument("--mode", default="context_causal")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.mode, args.frames, args.size)
    print(f"load average at start {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for mode in ("context_causal", "padded"):
        cells = {kind: [] for kind in ("dense", "block")}
        for _ in range(2):                                        # alternate: dense, block, dense, block
            for kind in cells:
                cells[kind].append(run_child(kind, mode, args.frames, args.size))
        d, b = (torch.load(cells[k][0]["out"], weights_only=True) for k in ("dense", "block"))
        real = d["real"][:, None, :, None].expand_as(d["out"])
        diff = (d["out"] - b["out"])[real].abs().max().item()
        for runs in cells.values():
            for r in runs:
                os.remove(r["out"])
        peak = {k: statistics.median(r["peak"] for r in runs) for k, runs in cells.items()}
        saved = {k: runs[0]["saved"] for k, runs in cells.items()}
        secs = {k: statistics.median(r["seconds"] for r in runs) for k, runs in cells.items()}
        B, L = cells["dense"][0]["B"], cells["dense"][0]["L"]
        print(f"{mode:15s} B={B} L={L} heads={CFG.heads} head_dim={CFG.head_dim} (fwd + bwd, fp32)")
        print(f"  peak RSS gain dense {peak['dense'] / 2**20:8.1f} MiB   block {peak['block'] / 2**20:8.1f} MiB"
              f"   block/dense {peak['block'] / max(peak['dense'], 1):.3f}   (dense mask alone: "
              f"{B * L * L / 2**20:.1f} MiB)")
        print(f"  saved for bwd dense {saved['dense'] / 2**20:8.1f} MiB   block {saved['block'] / 2**20:8.1f} MiB"
              f"   block/dense {saved['block'] / saved['dense']:.3f}")
        print(f"  time          dense {secs['dense'] * 1e3:8.1f} ms    block {secs['block'] * 1e3:8.1f} ms"
              f"    block/dense {secs['block'] / secs['dense']:.3f}")
        print(f"  equal         max abs diff over real tokens {diff:.2e}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
