import numpy as np
import pytest

from dataprep.config import FilterConfig
from dataprep.filters import filter_shots, split_long


def test_split_long_gives_fewest_equal_pieces_within_limit():
    pieces = split_long(0, 250, fps=25.0, max_shot_s=4.0)  # 10 s -> 3 pieces of <= 4 s
    assert len(pieces) == 3
    assert pieces[0][0] == 0 and pieces[-1][1] == 250
    assert all(b == a2 for (_, b), (a2, _) in zip(pieces, pieces[1:]))
    assert all((b - a) / 25.0 <= 4.0 for a, b in pieces)
    assert max(b - a for a, b in pieces) - min(b - a for a, b in pieces) <= 1


def test_split_long_keeps_short_shots_whole():
    assert split_long(10, 40, fps=24.0, max_shot_s=10.0) == [(10, 40)]


def _stats(n, luma=100.0, motion=5.0):
    return np.full(n, luma, np.float32), np.full(n, motion, np.float32)


def test_every_drop_has_its_reason():
    cfg = FilterConfig(min_shot_s=0.5, max_shot_s=4.0, black_luma=16, static_diff=0.5)
    fps = 10.0
    luma, motion = _stats(100)
    luma[10:30] = 3.0  # shot 1 is black
    motion[30:60] = 0.0  # shot 2 is static
    shots = [(0, 10), (10, 30), (30, 60), (60, 63), (63, 100)]
    spans = filter_shots(shots, luma, motion, fps, cfg)
    reasons = {(s.start_frame, s.end_frame): s.drop_reason for s in spans}
    assert reasons[(0, 10)] is None
    assert reasons[(10, 30)] == "black"
    assert reasons[(30, 60)] == "static"
    assert reasons[(60, 63)] == "too_short"
    assert reasons[(63, 100)] is None  # 3.7 s: kept whole
    assert [s.parent_shot for s in spans] == [0, 1, 2, 3, 4]


def test_long_shot_split_into_kept_pieces_with_parent():
    cfg = FilterConfig(max_shot_s=2.0)
    luma, motion = _stats(100)
    spans = filter_shots([(0, 100)], luma, motion, 10.0, cfg)
    assert [(s.start_frame, s.end_frame) for s in spans] == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]
    assert all(s.kept and s.parent_shot == 0 for s in spans)


def test_motion_at_a_cut_does_not_count_as_motion():
    # a static shot right after a cut has a large motion value at its first frame only
    luma, motion = _stats(40, motion=0.0)
    motion[20] = 80.0
    spans = filter_shots([(0, 20), (20, 40)], luma, motion, 10.0, FilterConfig())
    assert [s.drop_reason for s in spans] == ["static", "static"]


def test_bad_inputs_raise_with_values():
    luma, motion = _stats(10)
    with pytest.raises(ValueError, match="outside the 10 decoded frames"):
        filter_shots([(0, 12)], luma, motion, 10.0, FilterConfig())
    with pytest.raises(ValueError, match="greater than min_shot_s"):
        FilterConfig(min_shot_s=5, max_shot_s=2)
