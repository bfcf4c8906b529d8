"""Training benchmarks, each a ratio measured side by side in one run (2 CPU cores, gloo, fp32).

1. engine overhead: step time of the DeepSpeed engine (1 process, ZeRO-2) / a plain PyTorch
   loop (AdamW + clipping) on the same lct-small model and batch. Aim <= 1.15.
2. scaling: scenes/s of `lct train` with 2 Ray workers / 1 worker on 2 cores, real loader.
3. memory: per-rank parameter + optimizer MB under ZeRO-1/2/3 with 2 workers / the total
   (1 worker). ZeRO-3 should be ~1/2.
4. data wait: the share of each step spent waiting for the loader (median). Aim < 10%.

    .venv/bin/python bench/train.py [--steps 12] [--only overhead|cluster]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from model import LCT, PRESETS, Scene, Shot, collate  # noqa: E402


def batch_of(cfg, scenes: int = 2, shots: int = 3, frames: int = 8, size: int = 32):
    gen = torch.Generator().manual_seed(0)
    text = lambda: torch.randn(12, cfg.text_dim, generator=gen)  # noqa: E731
    made = [Scene(text(), [Shot(text(), torch.randn(3, frames, size, size, generator=gen)) for _ in range(shots)])
            for _ in range(scenes)]
    return collate(made, cfg), torch.rand(scenes, shots, generator=gen)


def loss_of(velocities) -> torch.Tensor:
    return torch.stack([(v**2).mean() for row in velocities for v in row]).mean()


def bench_overhead(steps: int) -> None:
    import deepspeed

    from training.config import TrainConfig, deepspeed_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ |= {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(2)
    cfg = PRESETS["lct-small"]
    batch, t = batch_of(cfg)
    torch.manual_seed(0)
    plain = LCT(cfg)
    torch.manual_seed(0)
    ds_model = LCT(cfg)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    train_cfg = TrainConfig.model_validate({"data": {"size": [32, 32]}, "engine": {"workers": 1, "zero_stage": 2}})
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=ds_model, model_parameters=ds_model.parameters(),
                                      config=deepspeed_config(train_cfg, 1))

    def plain_step():
        loss = loss_of(plain(batch, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt.step()

    def engine_step():
        loss = loss_of(engine(batch, t))
        engine.backward(loss)
        engine.step()

    times = {"plain": [], "deepspeed": []}
    for i in range(steps + 2):                    # interleaved; the first 2 of each are warm-up
        for name, step in (("plain", plain_step), ("deepspeed", engine_step)):
            start = time.perf_counter()
            step()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    p, d = statistics.median(times["plain"]), statistics.median(times["deepspeed"])
    print(f"\n[1] engine overhead, lct-small, 2 scenes x 3 shots x 8x32x32, median of {steps} interleaved steps")
    print(f"    plain PyTorch {p * 1e3:.0f} ms/step   DeepSpeed ZeRO-2 (1 process) {d * 1e3:.0f} ms/step")
    print(f"    overhead ratio deepspeed/plain = {d / p:.3f}x   (aim <= 1.15)")


def make_dataset(root: Path) -> Path:
    from dataprep.config import CurateConfig
    from dataprep.run import curate
    from dataprep.synthetic import SynthConfig, make_films

    films = root / "films"
    make_films(SynthConfig(n_films=6, seed=5), films)
    cfg = CurateConfig.model_validate({
        "clips": {"width": 64, "height": 64, "fps": 8.0, "keyframes": 2},
        "embed": {"model": "ViT-S-32-alt"}, "caption": {"coca": False}, "shards": {"max_samples": 4},
    })
    curate([str(films)], root / "dataset", cfg)
    return root / "dataset"


def run_metrics(dataset: Path, out: Path, workers: int, zero: int, steps: int) -> list[dict]:
    from training.config import TrainConfig
    from training.launch import launch

    cfg = TrainConfig.model_validate({
        "data": {"dataset": str(dataset), "frames": 8, "size": [32, 32]},
        "model": {"preset": "lct-small"},
        "engine": {"workers": workers, "zero_stage": zero},
        "schedule": {"steps": steps, "checkpoint_every": steps, "sample_steps": 1},
    })
    return launch(cfg, out).metrics


def pinned_ray(cores: set[int]) -> None:
    """A fresh local Ray whose processes can only run on `cores` (they inherit the driver's affinity)."""
    import ray

    ray.shutdown()
    os.sched_setaffinity(0, cores)
    ray.init(num_cpus=len(cores), include_dashboard=False, logging_level="ERROR")


def bench_cluster(steps: int) -> None:
    import ray

    all_cores = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="lct-bench-train-") as tmp:
        root = Path(tmp)
        ray.init(num_cpus=len(all_cores), include_dashboard=False, logging_level="ERROR")
        dataset = make_dataset(root)
        runs = {}
        # 1 worker pinned to 1 core (its loader thread cannot borrow the idle core), then 2 workers on 2
        for workers, zero, cores in ((1, 2, {min(all_cores)}), (2, 2, all_cores), (2, 1, all_cores), (2, 3, all_cores)):
            pinned_ray(cores)
            runs[(workers, zero)] = run_metrics(dataset, root / f"run-{workers}-{zero}", workers, zero, steps)
        ray.shutdown()
        os.sched_setaffinity(0, all_cores)

        def median(rows, key, skip=3):
            values = [r[key] for r in rows[skip:] if r.get(key) is not None]
            return statistics.median(values) if values else float("nan")

        one, two = median(runs[(1, 2)], "samples_per_s"), median(runs[(2, 2)], "samples_per_s")
        print(f"\n[2] scaling, lct-small, real loader, ZeRO-2, median over steps 4..{steps}")
        print(f"    1 worker on 1 core {one:.2f} scenes/s   2 workers on 2 cores {two:.2f} scenes/s   ratio 2/1 = {two / one:.2f}x")
        total = median(runs[(1, 2)], "state_mb", skip=0)
        print("\n[3] parameter + optimizer MB per rank (2 workers) / total (1 worker, "
              f"{total:.1f} MB = fp32 params + fp32 master copy + AdamW moments; gradients not counted)")
        for zero in (1, 2, 3):
            per_rank = median(runs[(2, zero)], "state_mb", skip=0)
            print(f"    ZeRO-{zero}: {per_rank:.1f} MB per rank = {per_rank / total:.2f} of the total")
        print("\n[4] data-wait share of step time (median), real loader with a decode thread")
        for (workers, zero), rows in runs.items():
            print(f"    {workers} worker(s) ZeRO-{zero}: {median(rows, 'data_wait'):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", choices=["overhead", "cluster"])
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if args.only in (None, "cluster"):
        bench_cluster(args.steps)
    if args.only in (None, "overhead"):
        bench_overhead(args.steps)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
