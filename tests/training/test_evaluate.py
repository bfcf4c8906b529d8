"""`lct eval`: held-out scenes, the metrics on constructed cases, and the end-to-end report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dataprep.config import EmbedConfig
from pipelines.cli import app
from training.evaluate import ROWS, Scorer, frame_diff, heldout_keys, mean_metrics, pairwise_mean
from tests.training.test_generate import make_checkpoint

RNG = np.random.default_rng(0)


def noise_shot(frames: int = 4, size: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def solid_shot(value: tuple[int, int, int], frames: int = 4, size: int = 16) -> np.ndarray:
    return np.broadcast_to(np.array(value, np.uint8), (frames, size, size, 3)).copy()


def test_metrics_on_constructed_cases():
    assert pairwise_mean([np.ones(3)], np.dot) is None                        # one shot: no pair
    assert pairwise_mean([1.0, 2.0, 4.0], lambda a, b: a * b) == pytest.approx((2 + 4 + 8) / 3)
    assert frame_diff(solid_shot((10, 200, 30))) == 0.0                       # a static clip
    flicker = np.stack([solid_shot((0, 0, 0), 1)[0], solid_shot((255, 255, 255), 1)[0]] * 2)
    assert frame_diff(flicker) == pytest.approx(1.0)
    assert 0.2 < frame_diff(noise_shot()) < 0.5                               # |U - U'| averages 1/3


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(EmbedConfig(model="ViT-S-32-alt"))                          # random init, as the fixture data


def test_scores_of_identical_and_unrelated_shots(scorer):
    shot = noise_shot()
    same = scorer([shot, shot.copy(), shot.copy()], ["a", "b", "c"])
    assert same["clip_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert same["hist_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert same["text_alignment"] is None                                     # random-init CLIP: n/a
    assert scorer.description["random_init"] is True
    unrelated = scorer([noise_shot(), solid_shot((250, 10, 10)), solid_shot((10, 10, 250))], ["a", "b", "c"])
    assert unrelated["hist_consistency"] < 0.05
    assert unrelated["clip_consistency"] < same["clip_consistency"] - 0.01


def test_no_scored_shots_is_not_a_number(scorer):
    """A 1-shot held-out scene's conditioned row scores no shot: every metric is None (n/a), never NaN,
    so eval.json stays strict JSON and the row's means skip the scene (a NaN made the whole column NaN)."""
    metrics = scorer([], [])
    assert all(v is None for v in metrics.values()), metrics
    assert mean_metrics([metrics, {"frame_diff": 0.25}])["frame_diff"] == 0.25


@pytest.mark.slow
def test_heldout_keys_are_shared_with_the_trainer_and_nested(curated):
    from training.data import heldout_keys as trainer_rule

    assert heldout_keys is trainer_rule
    two, three = heldout_keys(curated, 2), heldout_keys(curated, 3)
    assert len(two) == 2 and set(two) <= set(three) and heldout_keys(curated, 0) == []
    assert len(heldout_keys(curated, 10_000)) == 11                # every scene of the fixture


@pytest.mark.slow
def test_cli_eval_reports_every_row(curated, tmp_path):
    run = make_checkpoint(tmp_path / "run")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--data", str(curated), "--out", str(out),
                                      "--scenes", "2", "--steps", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert list(report["rows"]) == list(ROWS)
    assert report["heldout"] == heldout_keys(curated, 2) and report["scenes"] == 2
    assert report["clip"]["random_init"] is True
    for name, metrics in report["rows"].items():
        assert metrics["text_alignment"] is None                              # no pretrained CLIP here
        assert 0.0 <= metrics["frame_diff"] <= 1.0
        assert metrics["hist_consistency"] is None or 0.0 <= metrics["hist_consistency"] <= 1.0
        assert (metrics["seconds"] is None) == (name == "real")
    for scene in report["per_scene"]["conditioned"]:
        assert scene["shots"] == next(s["shots"] for s in report["per_scene"]["real"] if s["key"] == scene["key"])
    table = (out / "eval.md").read_text()
    assert "RANDOM-INIT" in table
    for name in ROWS:
        assert f"| {name} |" in table


def test_cli_eval_of_a_non_dataset_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a curated dataset" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path),
                                   "--out", str(tmp_path / "out"), "--modes", "jiont"])
    assert bad.exit_code == 2 and "jiont" in bad.output


@pytest.mark.slow
def test_eval_criteria_and_intervals(curated, tmp_path):
    from training.evaluate import evaluate
    from model.export import load_bundle

    bundle = load_bundle(make_checkpoint(tmp_path / "run"))
    sync = load_bundle(make_checkpoint(tmp_path / "sync", seed=1))
    report = evaluate(bundle, curated, tmp_path / "eval", scenes=3, seeds=2, steps=1,
                      modes=("joint", "conditioned", "independent", "extend"), ablation=sync)
    assert list(report["rows"]) == ["real", "joint", "conditioned", "independent", "sync_joint"]
    names = [c["name"] for c in report["criteria"]]
    assert names == ["joint_minus_independent_consistency", "conditioned_attribute_error_over_baseline",
                     "extend_attribute_error_over_baseline", "probe_ratio_async", "probe_ratio_sync"]

    # extend: each held-out scene's first shot, continued from its real first segment, scored by the
    # real next segment of that shot (decoded here on its own)
    from dataprep.dataset import load_scenes
    from dataprep.media import decode_clip
    from training.consistency import attribute

    ext, seg_s = report["extend"], bundle.frames / bundle.fps
    shots = {s.key: s.mp4s[0] for s in load_scenes(curated, report["heldout"])}
    assert ext["scenes"] == len(ext["per_scene"]) >= 2
    for e in ext["per_scene"]:
        for name, start in (("given", 0.0), ("next", seg_s)):
            real = attribute(decode_clip(shots[e["key"]], bundle.frames, bundle.fps, bundle.size, start=start))
            assert e[name] == pytest.approx(real.tolist(), abs=1e-6), name
        assert len(e["made"]) == 2 and e["made"][0] != e["made"][1]             # one extension per seed
    assert ext["copy_error"] < 0.5 * ext["copy_baseline"]                      # a real shot continues itself
    assert not report["criteria"][2]["passed"]                                 # an untrained model's noise does not
    for c in report["criteria"]:
        assert set(c) >= {"name", "value", "ci_low", "ci_high", "threshold", "passed"}
        assert c["ci_low"] <= c["value"] <= c["ci_high"] or c["ci_low"] is None
    real = report["rows"]["real"]
    assert real["consistency"]["value"] > 0.3 and real["guard"]               # real synthetic scenes
    assert report["rows"]["joint"]["guard"] is False                          # an untrained model's noise
    assert not report["criteria"][0]["passed"]                                # ... cannot win
    for scene in report["per_scene"]["conditioned"]:
        assert scene["scored"] == scene["shots"] - 1                          # the given shot is excluded
    assert len(report["per_scene"]["joint"]) == 3 * 2                         # scenes x seeds
    # no two held-out scenes (or seeds) start from the same noise: shared noise makes shots of different
    # scenes alike and pulls every generated row's consistency and spread down
    noise = [r["noise_seed"] for r in report["per_scene"]["joint"]]
    assert len(set(noise)) == len(noise), noise
    assert [r["noise_seed"] for r in report["per_scene"]["sync_joint"]] == noise   # paired with the joint row
    assert abs(report["rows"]["independent"]["consistency"]["value"]) < 0.1   # unrelated shots: ~0, not below
    # the two probes paired: async's ratio over sync's, from the same scenes and noise
    gap = report["probe_async_over_sync"]
    assert gap["value"] == pytest.approx(report["criteria"][3]["value"] / report["criteria"][4]["value"])
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"]
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "## Criteria" in md and "probe_ratio_async / probe_ratio_sync" in md


@pytest.mark.slow
def test_cli_eval_resolves_relative_paths(curated, tmp_path, monkeypatch):
    """--checkpoint, --data and --out relative to where the user stands: eval.json records absolute paths."""
    import os

    make_checkpoint(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", "run", "--data", os.path.relpath(curated, tmp_path),
                                      "--out", "eval-rel", "--scenes", "1", "--seeds", "1", "--steps", "1",
                                      "--modes", "joint", "--no-probe"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval-rel" / "eval.json").read_text())
    assert report["checkpoint"]["path"] == str((tmp_path / "run" / "export").resolve())
    assert report["data"] == str(curated.resolve())
