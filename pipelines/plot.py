"""Charts of a training run with matplotlib (the object API: no pyplot state, safe in any thread).

    paths = training_charts(read_metrics(run), run, title=run.name)   # RUN/loss.png, RUN/training.png

`loss.png`: the loss per logged step and its smoothed line (an exponential moving average,
debiased like TensorBoard's smoothing slider). `training.png`: a grid of loss, learning rate,
gradient norm, loss per timestep bucket (the `loss_t0.00-0.25` ... metrics) and throughput
(scenes/s, with the share of the step spent waiting for data).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

SMOOTHING = 0.9


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average: s_i = m_i / (1 - weight^(i+1)), m_i = weight m_{i-1} + (1-weight) v_i."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, mean = [], 0.0
    for i, v in enumerate(values):
        mean = weight * mean + (1 - weight) * v
        out.append(mean / (1 - weight ** (i + 1)))
    return out


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    kept = [r for r in rows if isinstance(r.get(key), (int, float))]
    return [r["step"] for r in kept], [float(r[key]) for r in kept]


def _loss_axes(ax, rows: list[dict]) -> None:
    steps, loss = _series(rows, "loss")
    ax.plot(steps, loss, color="#1f77b4", alpha=0.35, linewidth=1, label="loss")
    ax.plot(steps, smooth(loss), color="#1f77b4", linewidth=2, label=f"smoothed ({SMOOTHING})")
    ax.set(title="loss", xlabel="step")
    ax.legend(loc="upper right")


def loss_figure(rows: list[dict], title: str) -> Figure:
    fig = Figure(figsize=(8, 4), layout="constrained")
    _loss_axes(fig.add_subplot(), rows)
    fig.suptitle(title)
    return fig


def training_figure(rows: list[dict], title: str) -> Figure:
    """2 x 3 panels: loss, lr, grad norm, loss per timestep bucket, throughput, data wait."""
    fig = Figure(figsize=(15, 8), layout="constrained")
    (loss, lr, grad), (buckets, speed, wait) = fig.subplots(2, 3)
    _loss_axes(loss, rows)
    lr.plot(*_series(rows, "lr"), color="#2ca02c")
    lr.set(title="learning rate", xlabel="step")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    grad.plot(*_series(rows, "grad_norm"), color="#d62728")
    grad.set(title="gradient norm (before clipping)", xlabel="step")
    keys = sorted({k for r in rows for k in r if k.startswith("loss_t")})
    for key in keys:
        buckets.plot(*_series(rows, key), label=key.removeprefix("loss_"), linewidth=1.2)
    buckets.set(title="loss per timestep bucket", xlabel="step")
    if keys:
        buckets.legend(loc="upper right", fontsize="small")
    speed.plot(*_series(rows, "samples_per_s"), color="#9467bd")
    speed.set(title="throughput (scenes/s, all workers)", xlabel="step")
    wait.plot(*_series(rows, "data_wait"), color="#ff7f0e")
    wait.set(title="share of the step waiting for data", xlabel="step", ylim=(0, 1))
    fig.suptitle(title)
    return fig


def training_charts(rows: list[dict], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write loss.png and training.png into `out_dir`; {} when no step logged a loss."""
    if not _series(rows, "loss")[0]:
        return {}
    out_dir = Path(out_dir)
    paths = {"loss": out_dir / "loss.png", "training": out_dir / "training.png"}
    loss_figure(rows, f"training loss, {title}").savefig(paths["loss"], dpi=100)
    training_figure(rows, f"training run {title}").savefig(paths["training"], dpi=80)
    return paths
