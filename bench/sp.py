"""Ulysses sequence parallelism on CPU: one long scene at P = 1 vs P = 2 (2 gloo processes).

Per rank, forward + backward of the whole model (lct-small, fp32, 1 thread per rank) on one scene:

    activation memory   bytes autograd saves for backward (saved_tensors_hooks, unique storages,
                        parameters excluded: exact, load-independent), and peak RSS during the steps minus the RSS
                        before them (transients included; noisy)
    step time           median of the timed steps after a warm-up (wall; disturbed by load)
    all-to-all bytes    the bytes of every tensor passed to dist.all_to_all_single in one step
                        (counted by wrapping it), against the analytic figure
                        8 x depth x B x Ls x D x 4 B   (Ls = ceil(Lt/P) + ceil(Lv/P) tokens per rank;
                        q, k, v and the output, forward and backward); (P-1)/P of it leaves the rank

P = 2 ranks sum their gradients with one all_reduce after backward, outside the timed step
(data parallelism or ZeRO reduces gradients at P = 1 too). Each measurement runs in fresh
processes, P = 1 and P = 2 alternating (1, 2, 1, 2, ...); the load average is printed around them.

    .venv/bin/python bench/sp.py [--shots 4] [--frames 8] [--size 48] [--repeats 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from model import LCT, PRESETS, Scene, Shot, collate  # noqa: E402
from training.sequence_parallel import UlyssesAttention, shard_batch  # noqa: E402

CFG = PRESETS["lct-small"]   # width 256, 4 heads: P = 2 gives each rank 2


def make_batch(shots: int, frames: int, size: int):
    """One scene of `shots` shots, each (C, frames, size, size) latents and a 16-token caption."""
    g = torch.Generator().manual_seed(0)
    C, D = CFG.latent_channels, CFG.text_dim
    scene = Scene(torch.randn(16, D, generator=g),
                  [Shot(torch.randn(16, D, generator=g), torch.randn(C, frames, size, size, generator=g))
                   for _ in range(shots)])
    return collate([scene], CFG), torch.rand(1, shots, generator=g)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def saved_bytes(fn, params: set[int]) -> tuple[int, object]:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs (the activations:
    parameters, which linear layers save too, are left out)."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type == "cpu" and t.untyped_storage().data_ptr() not in params:
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def worker(rank: int, P: int, port: int, args: dict, path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=P)
    sent = [0, 0]                                              # bytes, calls
    inner = dist.all_to_all_single

    def counting(output, input, *a, **kw):
        sent[0] += input.numel() * input.element_size()
        sent[1] += 1
        return inner(output, input, *a, **kw)

    dist.all_to_all_single = counting                          # what training.sequence_parallel calls
    try:
        torch.manual_seed(0)
        model = LCT(CFG)
        batch, t = make_batch(args["shots"], args["frames"], args["size"])
        Lt, Lv = batch.txt.shape[1], batch.vid.shape[1]
        if P > 1:
            model.set_attention(UlyssesAttention())
            batch = shard_batch(batch, rank, P)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        w = torch.randn(batch.vid.shape[:2] + (CFG.patch_dim,), generator=torch.Generator().manual_seed(rank))

        def step():
            model.zero_grad(set_to_none=True)
            _, out = saved_bytes(lambda: model(batch, t, packed=True), params)   # (1, Lv / P, patch_dim)
            (out * w).sum().backward()

        step()                                                 # warm-up (allocator, kernels)
        before = rss_bytes()
        times, saved = [], None
        for _ in range(args["steps"]):
            sent[:] = [0, 0]
            dist.barrier()
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            saved, out = saved_bytes(lambda: model(batch, t, packed=True), params)
            (out * w).sum().backward()
            times.append(time.perf_counter() - start)
            per_step = list(sent)
            if P > 1:
                for p in model.parameters():                   # the SP group's gradient sum (untimed)
                    dist.all_reduce(p.grad)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        Ls = batch.txt.shape[1] + batch.vid.shape[1]
        analytic = 8 * CFG.depth * 1 * Ls * CFG.width * 4 if P > 1 else 0
        result = {"rank": rank, "P": P, "Lt": Lt, "Lv": Lv, "local_tokens": Ls, "saved_bytes": saved,
                  "rss_peak_delta": peak - before, "step_s": statistics.median(times),
                  "a2a_bytes": per_step[0], "a2a_calls": per_step[1], "a2a_analytic": analytic}
        Path(f"{path}.{rank}").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(P: int, args: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "result")
        mp.start_processes(worker, args=(P, free_port(), args, path), nprocs=P, start_method="spawn")
        return [json.loads(Path(f"{path}.{r}").read_text()) for r in range(P)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=48, help="latent height = width")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after 1 warm-up)")
    a = parser.parse_args()
    args = {"shots": a.shots, "frames": a.frames, "size": a.size, "steps": a.steps}
    print(f"load average before: {os.getloadavg()}", flush=True)
    runs: dict[int, list[list[dict]]] = {1: [], 2: []}
    for rep in range(a.repeats):
        for P in (1, 2):
            ranks = measure(P, args)
            runs[P].append(ranks)
            print(f"rep {rep} P={P}: " + "; ".join(
                f"rank {r['rank']}: {r['local_tokens']} tokens, saved {r['saved_bytes'] / 2**20:.1f} MiB, "
                f"RSS +{r['rss_peak_delta'] / 2**20:.0f} MiB, {r['step_s']:.2f} s" for r in ranks)
                + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average after: {os.getloadavg()}")

    def med(P: int, key: str) -> float:   # per rank: the worst rank of each repeat, median over repeats
        return statistics.median(max(r[key] for r in ranks) for ranks in runs[P])

    one = runs[1][0][0]
    two = runs[2][0]
    print(f"\nscene: {a.shots} shots x {a.frames} frames x {a.size}^2 latents, lct-small: "
          f"Lt = {one['Lt']}, Lv = {one['Lv']}, L = {one['Lt'] + one['Lv']}")
    print(f"saved for backward per rank: P=1 {med(1, 'saved_bytes') / 2**20:.1f} MiB, P=2 {med(2, 'saved_bytes') / 2**20:.1f} MiB "
          f"-> ratio {med(2, 'saved_bytes') / med(1, 'saved_bytes'):.3f} (aim <= 0.6)")
    print(f"peak RSS delta per rank: P=1 {med(1, 'rss_peak_delta') / 2**20:.0f} MiB, P=2 {med(2, 'rss_peak_delta') / 2**20:.0f} MiB "
          f"-> ratio {med(2, 'rss_peak_delta') / med(1, 'rss_peak_delta'):.3f}")
    print(f"step time (fwd + bwd): P=1 {med(1, 'step_s'):.2f} s, P=2 {med(2, 'step_s'):.2f} s "
          f"-> ratio {med(2, 'step_s') / med(1, 'step_s'):.3f}")
    for r in two:
        print(f"all-to-all, rank {r['rank']}: {r['a2a_calls']} calls, {r['a2a_bytes']:,} B per step measured, "
              f"{r['a2a_analytic']:,} B analytic ({r['a2a_bytes'] / r['a2a_analytic']:.4f}); "
              f"{r['a2a_bytes'] // 2:,} B leave the rank")


if __name__ == "__main__":
    main()
