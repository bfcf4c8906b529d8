"""pipelines.plot (matplotlib charts of a run) and the per-run Prefect artifact key of the train flow."""

import math
import re
from pathlib import Path

import pytest
from PIL import Image

from pipelines.plot import loss_figure, smooth, training_charts, training_figure


def _rows(n=40):
    return [{"step": i, "loss": 1 / i + 0.1 * (i % 2), "lr": 1e-3 * min(1, i / 10), "grad_norm": 3 / i,
             "samples_per_s": 2 + math.sin(i), "data_wait": 0.2, "loss_t0.00-0.25": 0.3 / i, "loss_t0.75-1.00": 0.9 / i}
            for i in range(1, n + 1)]


def test_smooth_is_a_debiased_ema():
    assert smooth([5.0] * 10) == pytest.approx([5.0] * 10)  # debiased: no ramp-up from 0
    assert smooth([1.0, 2.0, 3.0], weight=0.0) == [1.0, 2.0, 3.0]
    assert smooth([0.0, 1.0], weight=0.5) == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5) / 0.75])
    noisy = [1 + (-1) ** i for i in range(200)]
    assert max(smooth(noisy)[50:]) - min(smooth(noisy)[50:]) < 0.25 < max(noisy) - min(noisy)
    with pytest.raises(ValueError, match="smoothing weight"):
        smooth([1.0], weight=1.0)


def test_the_figures_plot_each_metric():
    rows = _rows()
    (ax,) = loss_figure(rows, "t").axes
    raw, smoothed = ax.get_lines()
    assert list(raw.get_ydata()) == [r["loss"] for r in rows]
    assert list(smoothed.get_ydata()) == pytest.approx(smooth([r["loss"] for r in rows]))
    axes = {a.get_title(): a for a in training_figure(rows, "t").axes}
    assert set(axes) == {"loss", "learning rate", "gradient norm (before clipping)", "loss per timestep bucket",
                         "throughput (scenes/s, all workers)", "share of the step waiting for data"}
    assert list(axes["learning rate"].get_lines()[0].get_ydata()) == [r["lr"] for r in rows]
    assert list(axes["gradient norm (before clipping)"].get_lines()[0].get_ydata()) == [r["grad_norm"] for r in rows]
    buckets = axes["loss per timestep bucket"].get_lines()
    assert [b.get_label() for b in buckets] == ["t0.00-0.25", "t0.75-1.00"]
    assert list(buckets[1].get_ydata()) == [r["loss_t0.75-1.00"] for r in rows]
    assert list(axes["throughput (scenes/s, all workers)"].get_lines()[0].get_ydata()) == [r["samples_per_s"] for r in rows]


def test_metrics_missing_in_some_rows_are_skipped_not_zeroed():
    rows = _rows(6)
    rows[2] = {"step": 3, "loss": 0.5}  # a row without lr etc. (e.g. an older run's line)
    axes = {a.get_title(): a for a in training_figure(rows, "t").axes}
    assert list(axes["learning rate"].get_lines()[0].get_xdata()) == [1, 2, 4, 5, 6]


def test_training_charts_write_pngs(tmp_path):
    paths = training_charts(_rows(), tmp_path, "run-a")
    assert set(paths) == {"loss", "training"}
    for path in paths.values():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] >= 640
    assert training_charts([], tmp_path / "none", "x") == {}


def test_each_run_has_its_own_artifact_key(tmp_path):
    from pipelines.flows.train import summary_key

    a, b = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert summary_key(a) != summary_key(b)  # same dir name, different runs
    assert summary_key(a) == summary_key(Path(str(a)))  # the same run keeps its key (re-runs update it)
    assert summary_key(tmp_path / "Run_Causal.v2") .startswith("train-run-causal-v2-")
    for key in (summary_key(a), summary_key(tmp_path / "Ünïcode run!")):
        assert re.fullmatch(r"[a-z0-9-]+", key), key  # what Prefect accepts as an artifact key
