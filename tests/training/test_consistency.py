"""The normalised consistency cannot be gamed: noise, a constant output and shuffled shots score ~0."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep.synthetic import SynthConfig, draw_shot_frame, plan_film
from training.consistency import (
    attribute, attribute_error, between_distance, bootstrap, consistency, descriptor, guard, resampled,
)


@pytest.fixture(scope="module")
def real_scenes() -> list[list[np.ndarray]]:
    """Shots (3 frames each) of the scenes of 6 synthetic films, drawn without encoding."""
    cfg = SynthConfig(n_films=6, sizes=[(96, 64)], hard_cases=False)
    scenes = []
    for i in range(cfg.n_films):
        spec = plan_film(cfg.seed, i, cfg)
        for scene in spec.scenes:
            shots = [np.stack([draw_shot_frame(spec, spec.shots[k], s) for s in (0.0, 0.4, 0.8)])
                     for k in scene.shot_indices]
            scenes.append(shots)
    return scenes


def describe(scenes):
    return [[descriptor(s) for s in scene] for scene in scenes]


def test_real_scenes_score_high_and_pass_the_guard(real_scenes):
    d = describe(real_scenes)
    assert len(d) >= 12
    score = consistency(d)
    assert score > 0.4, score
    assert guard(between_distance(d), between_distance(d))


def test_noise_and_constant_output_score_zero_and_fail_the_guard(real_scenes):
    shape = real_scenes[0][0].shape
    real_spread = between_distance(describe(real_scenes))
    grey = describe([[np.full(shape, 128, np.uint8) for _ in scene] for scene in real_scenes])
    assert consistency(grey) == 0.0 and not guard(between_distance(grey), real_spread)
    # noise: each draw scatters around 0 (17 scenes of 2-3 shots, 3-D means: about +-0.1), the mean of
    # draws is ~0, and its spread is a sliver of the real scenes'
    scores = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        d = describe([[rng.integers(0, 256, shape, dtype=np.uint8) for _ in scene] for scene in real_scenes])
        scores.append(consistency(d))
        assert abs(scores[-1]) < 0.15, scores
        assert not guard(between_distance(d), real_spread)
    assert abs(np.mean(scores)) < 0.05, scores


def test_shuffled_shots_score_zero(real_scenes):
    rng = np.random.default_rng(1)
    shots = [s for scene in real_scenes for s in scene]
    order = rng.permutation(len(shots))
    sizes, shuffled, k = [len(s) for s in real_scenes], [], 0
    for n in sizes:
        shuffled.append([shots[i] for i in order[k:k + n]])
        k += n
    score = consistency(describe(shuffled))
    assert abs(score) < 0.15, score
    assert guard(between_distance(describe(shuffled)), between_distance(describe(real_scenes)))


def test_bootstrap_interval_brackets_the_score_and_skips_self_pairs(real_scenes):
    d = describe(real_scenes)

    def stat(idx):
        scenes, groups = resampled(d, idx)
        return consistency(scenes, groups)

    lo, hi = bootstrap(stat, len(d), draws=200)
    assert lo < consistency(d) < hi and hi - lo < 0.5
    # a resample that draws one scene twice: the pair of copies is not a "between" pair
    assert between_distance([d[0], d[0]], groups=[0, 0]) is None
    assert bootstrap(stat, 1) == (None, None)


def test_attribute_error_against_the_cross_scene_baseline(real_scenes):
    attrs = [[attribute(s) for s in scene] for scene in real_scenes]
    own, baseline = attribute_error(attrs, attrs)                  # the real shots themselves
    assert own < 0.5 * baseline
    rolled = attrs[1:] + attrs[:1]                                  # every scene gets another's shots
    wrong, baseline2 = attribute_error(rolled, attrs)
    assert wrong > 0.5 * baseline2
