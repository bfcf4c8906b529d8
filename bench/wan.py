"""lct's Wan scene path vs the raw diffusers WanTransformer3DModel, measured side by side.

    python bench/wan.py [--width 384] [--layers 4] [--frames 5] [--size 16] [--repeat 5]

1. One-shot forward + backward on the same random weights and input: time ratio (lct / raw,
   aim <= 1.10) and activation-memory ratio (bytes saved for backward, counted with
   torch.autograd.graph.saved_tensors_hooks; on CUDA also the peak allocated memory).
2. Tokens/s of a 3-shot scene (forward + backward) through lct's path.
Prints the load average: the machine is shared, so read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# bench/ holds a model.py: drop this folder from the path so `model` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from diffusers import WanTransformer3DModel  # noqa: E402

from model import Scene, Shot, collate  # noqa: E402
from model.wan import WanConfig, WanLCT  # noqa: E402


def saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=384, help="heads * 64")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=5, help="latent frames per shot")
    parser.add_argument("--size", type=int, default=16, help="latent H = W per shot")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    heads = args.width // 64
    transformer = dict(patch_size=[1, 2, 2], num_attention_heads=heads, attention_head_dim=64, in_channels=16,
                       out_channels=16, text_dim=256, freq_dim=256, ffn_dim=4 * args.width, num_layers=args.layers)
    torch.manual_seed(0)
    raw = WanTransformer3DModel(**transformer).to(device)
    ours = WanTransformer3DModel(**transformer).to(device)
    ours.load_state_dict(raw.state_dict())
    ours = WanLCT.wrap(ours, WanConfig(transformer, text_len=64))

    C, Fr, S = 16, args.frames, args.size
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(C, Fr, S, S, generator=g)
    glob, shot_text = torch.randn(20, 256, generator=g), torch.randn(30, 256, generator=g)
    text = torch.nn.functional.pad(torch.cat([glob, shot_text]), (0, 0, 0, 14))[None].to(device)  # 64 tokens
    one = collate([Scene(glob, [Shot(shot_text, latent)])], ours.cfg).to(device)
    three = collate([Scene(glob, [Shot(shot_text, torch.randn(C, Fr, S, S, generator=g)) for _ in range(3)])],
                    ours.cfg).to(device)
    t1, t3 = torch.tensor([[0.5]], device=device), torch.tensor([[0.2, 0.5, 0.8]], device=device)

    def raw_step():
        raw(latent[None].to(device), torch.tensor([500.0], device=device), text).sample.square().mean().backward()

    def ours_step(batch=one, t=t1):
        ours(batch, t, packed=True).square().mean().backward()

    for fn in (raw_step, ours_step):          # warm-up
        fn()
    raw_s, ours_s = best_of(raw_step, args.repeat), best_of(ours_step, args.repeat)
    raw_mem, ours_mem = saved_bytes(raw_step), saved_bytes(ours_step)
    three_s = best_of(lambda: ours_step(three, t3), args.repeat)
    tokens = three.vid.shape[1]
    n_params = sum(p.numel() for p in raw.parameters()) / 1e6
    print(f"device {device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    print(f"Wan {n_params:.1f}M params (width {args.width}, {args.layers} layers); one shot = "
          f"{one.vid.shape[1]} video tokens x {Fr}x{S}x{S} latent")
    print(f"one-shot fwd+bwd   raw diffusers {raw_s * 1e3:8.1f} ms   lct {ours_s * 1e3:8.1f} ms   "
          f"time ratio lct/raw {ours_s / raw_s:.3f}")
    print(f"saved activations  raw {raw_mem / 2**20:8.1f} MiB   lct {ours_mem / 2**20:8.1f} MiB   "
          f"memory ratio lct/raw {ours_mem / raw_mem:.3f}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        raw_step()
        raw_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        ours_step()
        print(f"CUDA peak          ratio lct/raw {torch.cuda.max_memory_allocated() / raw_peak:.3f}")
    print(f"3-shot scene ({tokens} tokens) fwd+bwd {three_s * 1e3:.1f} ms = {tokens / three_s:,.0f} tokens/s")


if __name__ == "__main__":
    main()
