"""Step metrics: FLOPs counted from the config, MFU, memory, and the writers (TensorBoard, jsonl).

Rank 0 appends one JSON line per logged step to RUN/metrics.jsonl (the `lct train` progress bar
and the Prefect flow read it) and writes the same scalars to TensorBoard under RUN/tb.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from model import Batch, LCTConfig

# dense bf16 peak FLOP/s per GPU, for the MFU estimate on CUDA (None = unknown device)
GPU_PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def attended_pairs(batch: Batch, attention: str) -> int:
    """(query, key) pairs the attention computes, summed over the batch: real tokens only.

    bidirectional: n_real^2 per scene; context_causal: a token of group g sees groups 0..g, so
    sum_g n_g * (n_0 + ... + n_g). Masked-out pairs are not model FLOPs (a block kernel skips them).
    """
    group = torch.cat([batch.txt_group, batch.vid_group], dim=1)  # (B, L), -1 = padding
    total = 0
    for row in group:
        counts = torch.bincount(row[row >= 0]).long()             # (G,) tokens per group
        if attention == "context_causal":
            total += int((counts * counts.cumsum(0)).sum())
        else:
            total += int(counts.sum()) ** 2
    return total


def train_step_flops(cfg: LCTConfig, batch: Batch) -> int:
    """Analytic FLOPs of forward + backward: 2 x MACs of every matmul; backward = 2 x forward
    (input and weight gradients), except the layers fed by data (txt_in, vid_in, the first layer
    of the t and pooled-text MLPs): their input needs no gradient, backward = 1 x forward.

    Attention counts only the pairs the mask allows (`attended_pairs`): counting context-causal
    attention as dense read MFU above 100% once the block kernel skipped the masked blocks.
    tests/training/test_metrics.py checks the total against torch's FLOP counter of a real step.
    """
    B, Lt, Lv = batch.txt.shape[0], batch.txt.shape[1], batch.vid.shape[1]
    G = batch.pooled.shape[1]                                    # 1 + S groups per scene
    D, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    first = Lt * cfg.text_dim * D + Lv * cfg.patch_dim * D       # txt_in, vid_in
    first += (G - 1) * 256 * D + G * cfg.text_dim * D            # first layers of the t and pooled-text MLPs
    macs = (G - 1) * D * D + G * D * D                           # their second layers
    for i in range(cfg.depth):
        for n, pre_only in ((Lt, i == cfg.depth - 1), (Lv, False)):
            macs += G * D * (2 if pre_only else 6) * D + n * D * 3 * D   # adaLN, QKV
            if not pre_only:
                macs += n * D * D + 2 * n * D * hidden           # out proj, MLP
    macs += G * D * 2 * D + Lv * D * cfg.patch_dim               # final adaLN + linear
    # a shape-only batch (planning figures, SCALING.md) has no groups: every token real, dense
    pairs = attended_pairs(batch, cfg.attention) if hasattr(batch, "txt_group") else B * (Lt + Lv) ** 2
    attention = cfg.depth * 2 * pairs * D                        # QK^T and AV, all heads
    return 2 * 2 * B * first + 3 * 2 * (B * macs + attention)


def matmul_peak(device: str, n: int = 1024, repeats: int = 4) -> float | None:
    """Peak FLOP/s for the MFU estimate: a table for known GPUs, a measured fp32 matmul on CPU."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA allocator peak, or max RSS on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Custom Ray metrics of a training run (Prometheus: ray_<name>{run="<run dir name>"}); the Grafana
# dashboard infra/grafana/lct.json plots them. metric key -> (Ray gauge name, description)
RAY_GAUGES = {
    "step": ("lct_train_step", "Optimizer step of the run."),
    "loss": ("lct_train_loss", "Training loss of the last logged step (mean over workers)."),
    "samples_per_s": ("lct_train_samples_per_s", "Scenes per second over all workers."),
    "data_wait": ("lct_train_data_wait", "Share of the step rank 0 waited for data (0-1)."),
    "mfu": ("lct_train_mfu", "Model FLOPs utilisation estimate (0-1)."),
}


class _RayGauges:
    """The RAY_GAUGES of one run, set from rank 0's metrics; nothing when Ray is not running."""

    def __init__(self, run: str):
        import ray
        from ray.util import metrics

        self.run = run
        self.gauges = {key: metrics.Gauge(name, desc, tag_keys=("run",)) for key, (name, desc) in RAY_GAUGES.items()}
        assert ray.is_initialized()

    def set(self, values: dict) -> None:
        for key, gauge in self.gauges.items():
            if isinstance(values.get(key), (int, float)):
                gauge.set(float(values[key]), tags={"run": self.run})


def _ray_gauges(run: str) -> _RayGauges | None:
    try:
        import ray
    except ImportError:
        return None
    return _RayGauges(run) if ray.is_initialized() else None


class MetricsWriter:
    """Rank 0's sink: RUN/metrics.jsonl + TensorBoard (RUN/tb) + Ray gauges (inside Ray)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.ray = _ray_gauges(Path(run_dir).name)

    def write(self, step: int, metrics: dict) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, step)
        if self.ray:
            self.ray.set({"step": step, **metrics})

    def images(self, sample_dir: Path, step: int) -> None:
        """The validation sample's contact sheets (generated, real) as TensorBoard images."""
        import numpy as np
        from PIL import Image

        for name in ("sheet", "real"):
            path = Path(sample_dir) / f"{name}.png"
            if path.is_file():
                pixels = np.asarray(Image.open(path).convert("RGB"))            # (H, W, 3) uint8
                self.tb.add_image(f"validation/{'generated' if name == 'sheet' else 'real'}", pixels, step,
                                  dataformats="HWC")
        self.tb.flush()

    def hparams(self, config: dict, final: dict) -> None:
        """The run's config (flattened, dotted keys) and final metrics in TensorBoard's HParams tab (RUN/tb/hparams)."""
        flat = flat_hparams(config)
        scores = {f"hparam/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))}
        self.tb.add_hparams(flat, scores, run_name="hparams")

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """{"optim.lr": 3e-4, "model.preset": "lct-small", ...}: what TensorBoard's add_hparams takes
    (bool, int, float, str; lists and None become their text)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat_hparams(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    """All complete lines of RUN/metrics.jsonl (a resumed run appends; later lines win per step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue                                 # a line being written
        rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def rank_state_mb(engine) -> float:
    """MB of parameters + optimizer state held by this rank (what ZeRO partitions), deduplicated."""
    seen: dict[int, int] = {}

    def add(t) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            seen.setdefault(t.data_ptr(), t.numel() * t.element_size())

    for p in engine.module.parameters():
        add(getattr(p, "ds_tensor", None) if hasattr(p, "ds_tensor") else p)   # ZeRO-3 keeps a partition
    optimizer = engine.optimizer
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):   # ZeRO-1/2, ZeRO-3 masters
        for t in getattr(optimizer, name, None) or []:
            add(t)
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        for t in state.values():
            add(t)
    return sum(seen.values()) / 2**20
