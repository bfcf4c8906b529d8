import numpy as np
import pytest

from dataprep.config import SceneConfig
from dataprep.scenes import adjusted_rand_index, colour_histogram, group_scenes, histogram_similarity


def _frames(colour, noise=0, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((2, 32, 32, 3), np.int16) + np.array(colour, np.int16)
    img += rng.integers(-noise, noise + 1, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_histograms_same_palette_high_different_low():
    a = colour_histogram(_frames((200, 30, 30), noise=20, seed=1))
    b = colour_histogram(_frames((200, 30, 30), noise=20, seed=2))
    c = colour_histogram(_frames((20, 40, 220), noise=20, seed=3))
    assert a.sum() == pytest.approx(1.0)
    assert histogram_similarity(a, b) > 0.8
    assert histogram_similarity(a, c) < 0.05


def test_grouping_by_palette_time_gap_and_chunk_shots():
    palettes = [(200, 30, 30)] * 3 + [(20, 40, 220)] * 2 + [(30, 200, 30)] * 4
    feats = np.stack([colour_histogram(_frames(p, 10, i)) for i, p in enumerate(palettes)])
    starts = [float(i) for i in range(9)]
    ends = [s + 1.0 for s in starts]
    cfg = SceneConfig(chunk_shots=9)
    assert group_scenes(starts, ends, feats, "histogram", cfg) == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    # a gap longer than max_gap_s splits a scene
    starts2 = starts[:1] + [s + 5.0 for s in starts[1:]]
    ends2 = ends[:1] + [e + 5.0 for e in ends[1:]]
    assert group_scenes(starts2, ends2, feats, "histogram", cfg)[0] == [0]
    # long scenes are split into balanced chunks
    assert group_scenes(starts, ends, feats, "histogram", SceneConfig(chunk_shots=2)) == [
        [0], [1, 2], [3, 4], [5, 6], [7, 8]
    ]


def test_lookback_keeps_shot_reverse_shot_together():
    a = _frames((200, 30, 30), 5)
    b = _frames((200, 200, 30), 5)
    feats = np.stack([colour_histogram(x) for x in [a, b, a, b]])
    # different palettes never join, whatever the lookback (it only sees the current scene)
    assert group_scenes([0, 1, 2, 3], [1, 2, 3, 4], feats, "histogram", SceneConfig(threshold=0.5)) == [
        [0], [1], [2], [3]
    ]
    # A B C A: C is far from B but close to A two shots back, so the lookback keeps it in the scene
    emb = np.array([[1, 0, 0], [0.85, 0.53, 0], [0.85, 0, 0.53], [1, 0, 0]], np.float32)
    assert group_scenes([0, 1, 2, 3], [1, 2, 3, 4], emb, "clip", SceneConfig()) == [[0, 1, 2, 3]]
    assert np.dot(emb[1], emb[2]) < 0.8  # so without the lookback C would start a new scene


def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]) < 0.0 + 1e-9
    mid = adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1])
    assert 0.0 < mid < 1.0


def test_bad_method_is_a_clear_error():
    with pytest.raises(ValueError, match="similarity method"):
        group_scenes([0.0], [1.0], np.zeros((1, 4)), "colour", SceneConfig())


def test_the_old_key_max_shots_still_loads_with_a_warning_naming_the_new_one():
    with pytest.warns(FutureWarning, match=r"scenes\.max_shots is deprecated: it is now scenes\.chunk_shots"):
        old = SceneConfig.model_validate({"max_shots": 2})
    assert old == SceneConfig(chunk_shots=2)
    with pytest.raises(ValueError, match=r"give only scenes\.chunk_shots"):
        SceneConfig.model_validate({"max_shots": 2, "chunk_shots": 3})
