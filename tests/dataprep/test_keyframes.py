import io

import av
import numpy as np
import pytest

from dataprep.config import ClipConfig
from dataprep.keyframes import extract_clips, keyframe_indices, output_indices


def test_index_rules():
    assert keyframe_indices(0, 30, 3) == [5, 15, 25]
    assert keyframe_indices(10, 12, 3) == [10, 11, 11]  # short span: repeats, stays inside
    out = output_indices(0, 60, fps_in=30.0, fps_out=10.0)
    assert out == list(range(0, 60, 3))
    assert output_indices(5, 6, 30.0, 8.0) == [5]  # always at least one frame


def _decode(mp4: bytes):
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, float(s.average_rate)


def test_clips_have_curated_size_fps_and_length(shared_data):
    cfg = ClipConfig(width=128, height=96, fps=10.0, keyframes=3)
    fps_in = 30000 / 1001
    spans = [(30, 180), (200, 260)]
    clips = extract_clips(str(shared_data / "testvideo.mp4"), spans, fps_in, cfg)
    assert len(clips) == 2 and all(c is not None for c in clips)
    for (a, b), clip in zip(spans, clips):
        frames, rate = _decode(clip.mp4)
        assert rate == pytest.approx(10.0)
        assert len(frames) == clip.n_frames == round((b - a) * 10.0 / fps_in)
        assert frames[0].shape == (96, 128, 3)
        assert clip.keyframes.shape == (3, 96, 128, 3) and clip.keyframes.dtype == np.uint8


def test_clips_are_deterministic_bytes(shared_data):
    cfg = ClipConfig(width=64, height=64, fps=8.0)
    spans = [(0, 30), (30, 90)]
    one = extract_clips(str(shared_data / "testvideo.mp4"), spans, 30000 / 1001, cfg)
    two = extract_clips(str(shared_data / "testvideo.mp4"), spans, 30000 / 1001, cfg)
    assert [c.mp4 for c in one] == [c.mp4 for c in two]
    assert all(np.array_equal(a.keyframes, b.keyframes) for a, b in zip(one, two))


def test_keyframes_show_the_span_content(shared_data):
    """The keyframe of a span matches the decoded source frame at that index (resized)."""
    cfg = ClipConfig(width=64, height=64, fps=8.0, keyframes=1)
    (clip,) = extract_clips(str(shared_data / "testvideo.mp4"), [(200, 260)], 30000 / 1001, cfg)
    with av.open(str(shared_data / "testvideo.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == 230:
                ref = frame.to_ndarray(width=114, height=64, format="rgb24")[:, 25:89]
                break
    assert np.abs(clip.keyframes[0].astype(int) - ref.astype(int)).mean() < 3


def test_spans_must_be_sorted_and_disjoint(shared_data):
    with pytest.raises(ValueError, match="sorted and disjoint"):
        extract_clips(str(shared_data / "testvideo.mp4"), [(10, 50), (40, 60)], 30.0, ClipConfig())


def test_rotated_film_comes_out_upright(tmp_path):
    """A film stored 64x32 with a 90-degree display matrix is watched (and curated) as 32x64."""
    path = tmp_path / "rotated.mp4"
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (220, 20, 20)  # left half red, right half blue, as stored
    stored[:, 32:] = (20, 20, 220)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    cfg = ClipConfig(width=32, height=64, fps=10.0, keyframes=1)
    (clip,) = extract_clips(str(path), [(0, 20)], 10.0, cfg, rotation=90)
    key = clip.keyframes[0].astype(int)  # (64, 32, 3): portrait, as displayed
    expected = np.rot90(stored, 1).astype(int)  # 90 degrees counter-clockwise: red ends at the bottom
    assert key.shape == expected.shape == (64, 32, 3)
    assert np.abs(key - expected).mean() < 12
    assert key[-8:, :, 0].mean() > 150 and key[:8, :, 2].mean() > 150
    frames, _ = _decode(clip.mp4)
    assert frames[0].shape == (64, 32, 3)
    with pytest.raises(ValueError, match="rotation must be"):
        extract_clips(str(path), [(0, 20)], 10.0, cfg, rotation=45)
