"""detect_shots: PySceneDetect's cuts on real clips, F1 on synthetic hard cuts, gradual transitions and
flashes, stats, truncated films; the thumbnail corrections of `dataprep.transitions` on made-up arrays."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep import synthetic
from dataprep.config import ShotsConfig
from dataprep.errors import FilmError
from dataprep.probe import probe
from dataprep.shots import detect_shots, scaled_size, shots_from_cuts
from dataprep.transitions import drop_flashes, gradual_cuts
from tests.dataprep.test_probe import faststart_copy

TESTVIDEO_STARTS = [0, 30, 180, 394]  # PySceneDetect 0.7.2 ContentDetector() defaults


def assert_tiles(shots: list[tuple[int, int]], n_frames: int):
    assert shots[0][0] == 0 and shots[-1][1] == n_frames
    assert all(a < b for a, b in shots)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(shots[:-1], shots[1:]))


def assert_near(starts: list[int], expected: list[int], tol: int):
    assert len(starts) == len(expected), f"shot starts {starts}, expected {expected} ± {tol}"
    assert all(abs(s - e) <= tol for s, e in zip(starts, expected)), f"shot starts {starts}, expected {expected} ± {tol}"


# ---------------------------------------------------------------- real clips


def test_testvideo_matches_pyscenedetect(shared_data):
    path = shared_data / "testvideo.mp4"
    detection = detect_shots(path, ShotsConfig(), probe(path))
    assert detection.n_frames == 720
    assert detection.fps == pytest.approx(30000 / 1001)
    assert_near(detection.starts, TESTVIDEO_STARTS, tol=2)
    assert_tiles(detection.shots, detection.n_frames)
    # testvideo.mp4 cuts into black at 180 and 360-394 and fades in: no extra fade or dissolve cut.
    assert detection.starts == TESTVIDEO_STARTS


def test_fades_clip_cuts_at_the_black(shared_data):
    # fades.mp4 fades out to black and in again twice; ContentDetector alone finds no cut at all.
    # PySceneDetect's ThresholdDetector starts scenes at 0, 84, 167.
    assert detect_shots(shared_data / "fades.mp4", ShotsConfig(gradual=False)).starts == [0]
    detection = detect_shots(shared_data / "fades.mp4")
    assert_near(detection.starts, [0, 84, 167], tol=8)


def test_adaptive_detector(shared_data):
    detection = detect_shots(shared_data / "testvideo.mp4", ShotsConfig(detector="adaptive"))
    assert detection.starts[:4] == pytest.approx(TESTVIDEO_STARTS, abs=2)
    # AdaptiveDetector also cuts into the dark end card at 691; PySceneDetect does the same.
    assert len(detection.starts) <= 5
    assert_tiles(detection.shots, detection.n_frames)


def test_counter_clip(shared_data):
    # counter.mp4 has no camera cuts, but its flat background changes colour every second:
    # PySceneDetect's ContentDetector (CLI, defaults) also starts shots at 0, 10, 20.
    detection = detect_shots(shared_data / "counter.mp4")
    assert detection.n_frames == 30 and detection.fps == 10.0
    assert detection.starts == [0, 10, 20]
    assert_tiles(detection.shots, 30)


def test_stats_per_frame(shared_data):
    detection = detect_shots(shared_data / "fades.mp4")
    assert detection.luma.shape == detection.motion.shape == (detection.n_frames,) == (250,)
    assert detection.luma.dtype == detection.motion.dtype == np.float32
    assert detection.motion[0] == 0.0
    assert 0 <= detection.luma.min() and detection.luma.max() <= 255
    assert 0 <= detection.motion.min() and detection.motion.max() <= 255
    # fades.mp4 fades through black: the darkest frames are near black, the brightest are not.
    assert detection.luma.min() < 5 and detection.luma.max() > 60


def test_static_clip_has_no_motion_and_black_has_no_luma(tmp_path):
    from tests.dataprep.test_probe import write_video

    path = write_video(tmp_path / "flat.mp4", 20, size=(64, 48))  # grey level steps by 37 each frame
    detection = detect_shots(path, ShotsConfig(threshold=255.0))
    assert detection.shots == [(0, 20)]
    assert detection.luma[0] < 3  # frame 0 is black
    assert detection.motion[1:].min() > 20  # every frame is a jump in grey level


# ---------------------------------------------------------------- truncated and bad films


def test_truncated_tail_keeps_decoded_frames(shared_data, tmp_path):
    data = faststart_copy(shared_data / "testvideo.mp4", tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    detection = detect_shots(tmp_path / "half.mp4")
    assert 200 < detection.n_frames < 720
    assert len(detection.luma) == detection.n_frames
    assert_tiles(detection.shots, detection.n_frames)
    expected = [s for s in TESTVIDEO_STARTS if s < detection.n_frames - 2]
    assert_near(detection.starts, expected, tol=2)


def test_truncated_to_nothing_decodable(shared_data, tmp_path):
    data = faststart_copy(shared_data / "testvideo.mp4", tmp_path / "fast.mp4").read_bytes()
    moov_end = data.index(b"mdat") + 4
    (tmp_path / "stub.mp4").write_bytes(data[: moov_end + 64])
    with pytest.raises(FilmError, match="no decodable video frames"):
        detect_shots(tmp_path / "stub.mp4")


def test_bad_input_is_a_film_error(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(10_000))
    with pytest.raises(FilmError, match="not a video container"):
        detect_shots(tmp_path / "noise.mp4")
    with pytest.raises(FilmError, match="file not found"):
        detect_shots(tmp_path / "missing.mp4")


# ---------------------------------------------------------------- pure helpers


def test_shots_from_cuts_tiles_and_dedups():
    assert shots_from_cuts([], 5) == [(0, 5)]
    assert shots_from_cuts([3, 0, 3, 9, 7], 9) == [(0, 3), (3, 7), (7, 9)]


def test_scaled_size_keeps_aspect_and_never_upscales():
    assert scaled_size(1280, 720, 256) == (256, 144)
    assert scaled_size(1920, 1080, 256) == (256, 144)
    assert scaled_size(200, 100, 256) == (200, 100)
    with pytest.raises(FilmError, match="invalid frame size 0x10"):
        scaled_size(0, 10, 256)


# ---------------------------------------------------------------- synthetic films with ground truth


@pytest.fixture(scope="module")
def synthetic_films(tmp_path_factory):
    # Plain cuts, fades/dissolves (odd films) and flashes (films 2, 5). Seed 3 has a dissolve of
    # 14 frames between shots with fast motion, the hardest case seen over seeds 0-9.
    cfg = synthetic.SynthConfig(n_films=6, seed=3)
    return synthetic.make_films(cfg, tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def synthetic_detections(synthetic_films):
    return [(synthetic.load_truth(path), detect_shots(path)) for path in synthetic_films]


def test_hard_cut_f1_on_synthetic_films(synthetic_detections):
    """F1 >= 0.95 at ±1 frame over all hard cuts; predictions near gradual transitions or flashes are not scored."""
    n_pred = n_truth = n_hit = 0
    for truth, detection in synthetic_detections:
        assert detection.n_frames == truth["n_frames"]
        ambiguous = synthetic.ambiguous_frames(truth)
        pred = [s for s in detection.starts[1:] if not any(abs(s - a) <= 2 for a in ambiguous)]
        cuts = synthetic.hard_cuts(truth)
        precision, recall, _ = synthetic.cut_f1(pred, cuts, tol=1)
        n_pred, n_truth = n_pred + len(pred), n_truth + len(cuts)
        n_hit += round(recall * len(cuts))
        assert precision * len(pred) == pytest.approx(recall * len(cuts))  # one-to-one matches
    precision, recall = n_hit / n_pred, n_hit / n_truth
    f1 = 2 * precision * recall / (precision + recall)
    assert n_truth >= 10, "too few hard cuts to measure F1"
    assert f1 >= 0.95, f"hard-cut F1 {f1:.3f} (precision {precision:.3f}, recall {recall:.3f}) < 0.95"


def test_gradual_transitions_become_cuts(synthetic_detections):
    """A cut within ±(length/2 + 1) frames of the midpoint of >= 80% of the fades and dissolves."""
    hits, misses = 0, []
    for truth, detection in synthetic_detections:
        for tr in truth["transitions"]:
            a, b = tr["start_frame"], tr["end_frame"]
            middle = a + (b - a) // 2
            if any(abs(s - middle) <= (b - a) / 2 + 1 for s in detection.starts):
                hits += 1
            else:
                misses.append((tr["kind"], a, b, detection.starts))
    assert hits + len(misses) >= 4, "too few gradual transitions to measure recall"
    assert hits / (hits + len(misses)) >= 0.8, f"missed {misses}"


def test_flashes_make_no_cut(synthetic_detections):
    """Hard-cut F1 >= 0.95 at ±1 frame with cuts at flashes counted as false (only transitions excused)."""
    n_flash_films = n_pred = n_truth = n_hit = 0
    for truth, detection in synthetic_detections:
        n_flash_films += bool(truth["flashes"])
        at_flash = [s for s in detection.starts if any(abs(s - f) <= 2 for f in truth["flashes"])]
        assert not at_flash, f"cut at {at_flash}, flashes at {truth['flashes']}"
        gradual = {f for tr in truth["transitions"] for f in range(tr["start_frame"] - 2, tr["end_frame"] + 3)}
        pred = [s for s in detection.starts[1:] if s not in gradual]
        cuts = synthetic.hard_cuts(truth)
        precision, recall, _ = synthetic.cut_f1(pred, cuts, tol=1)
        n_pred, n_truth, n_hit = n_pred + len(pred), n_truth + len(cuts), n_hit + round(recall * len(cuts))
    assert n_flash_films >= 2
    precision, recall = n_hit / n_pred, n_hit / n_truth
    assert 2 * precision * recall / (precision + recall) >= 0.95, f"precision {precision:.3f}, recall {recall:.3f}"


# ---------------------------------------------------------------- corrections on made-up thumbnails


def texture(seed: int, size=(18, 48, 3)) -> np.ndarray:
    """A smooth random picture (h, w, 3), 0-255."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (size[0] // 3, size[1] // 3, 3)).astype(np.float32)
    return cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC).clip(0, 255)


def test_drop_flashes_keeps_real_cuts():
    a, b = texture(0), texture(1)
    flash = np.full_like(a, 240.0)
    thumbs = np.stack([a] * 10 + [flash] * 2 + [a] * 10 + [b] * 10)  # flash at 10-11, cut at 22
    assert drop_flashes([10, 22], thumbs, max_return=0.2, frames=4) == [22]


def test_gradual_cuts_find_a_dissolve_and_a_fade_but_not_a_pan():
    a, b, cfg = texture(0), texture(1), ShotsConfig()
    alphas = np.clip((np.arange(60) - 25 + 0.5) / 10, 0, 1)  # a dissolve over frames 25-34
    dissolve = np.stack([(1 - t) * a + t * b for t in alphas])  # (60, h, w, 3)
    assert gradual_cuts([], dissolve, dissolve.mean(axis=(1, 2, 3)), cfg) == [30]

    gains = np.abs(np.arange(60) - 29.5) / 5 - 0.1  # out to black by 29, in from black from 30
    fade = np.stack([g * (a if i < 30 else b) for i, g in enumerate(np.clip(gains, 0, 1))])
    assert gradual_cuts([], fade, fade.mean(axis=(1, 2, 3)), cfg) == [30]

    wide = texture(2, size=(18, 200, 3))
    pan = np.stack([wide[:, i : i + 48] for i in range(0, 120, 2)])  # 2 px a frame, as fast as a whip pan
    assert gradual_cuts([], pan, pan.mean(axis=(1, 2, 3)), cfg) == []


def test_gradual_cuts_same_on_uint8_thumbnails_in_small_chunks(monkeypatch):
    from dataprep import transitions

    a, b, cfg = texture(0), texture(1), ShotsConfig()
    alphas = np.clip((np.arange(60) - 25 + 0.5) / 10, 0, 1)
    dissolve = np.stack([(1 - t) * a + t * b for t in alphas]).round().astype(np.uint8)  # as shots.py stores them
    luma = dissolve.mean(axis=(1, 2, 3))
    whole = gradual_cuts([], dissolve, luma, cfg)
    monkeypatch.setattr(transitions, "CHUNK", 7)  # differences computed a few frames at a time
    assert gradual_cuts([], dissolve, luma, cfg) == whole == [30]


def test_detector_failure_propagates_and_stops_the_decode_thread(shared_data, monkeypatch):
    import threading

    from dataprep import shots

    class Broken:
        def process_frame(self, timecode, frame):
            if timecode.frame_num == 5:
                raise RuntimeError("detector bug at frame 5")
            return []

    monkeypatch.setattr(shots, "make_detector", lambda cfg: Broken())
    threads_before = threading.active_count()
    with pytest.raises(RuntimeError, match="detector bug at frame 5"):
        detect_shots(shared_data / "testvideo.mp4")
    assert threading.active_count() == threads_before


# ---------------------------------------------------------------- damage the decoder hides


def damaged_copy(src, dst, n: int = 64 << 10, seed: int = 0):
    """A copy of `src` with `n` random bytes written over its middle (the container still opens)."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid - n // 2 : mid + n // 2] = np.random.default_rng(seed).bytes(n)
    dst.write_bytes(bytes(data))
    return dst


def test_decode_errors_are_counted_not_hidden(shared_data, tmp_path):
    import av.logging

    clean = detect_shots(shared_data / "testvideo.mp4")
    assert clean.decode_errors == 0 and clean.corrupt_frames == 0
    damaged = detect_shots(damaged_copy(shared_data / "testvideo.mp4", tmp_path / "damaged.mp4"))
    assert damaged.decode_errors > 0, damaged  # FFmpeg logged (and concealed) the damage
    assert damaged.n_frames > 0 and len(damaged.luma) == damaged.n_frames  # the frames that decoded stand
    assert av.logging.get_level() is None  # PyAV's log level is restored after the count
