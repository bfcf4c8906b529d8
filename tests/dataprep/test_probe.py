"""probe / film_id: real clips read right, and every kind of bad input is a FilmError with a clear reason."""

from __future__ import annotations

import os
import shutil
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from dataprep.config import ProbeConfig
from dataprep.errors import FilmError
from dataprep.probe import film_id, probe


# ---------------------------------------------------------------- writers of small test files


def write_video(path: Path, n_frames: int, fps: int = 25, size=(64, 48), rotation: int | None = None) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    if rotation is not None:
        stream.set_display_rotation(rotation)
    for i in range(n_frames):
        rgb = np.full((size[1], size[0], 3), (i * 37) % 256, np.uint8)  # (H, W, 3)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    return path


def write_aac(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    container = av.open(str(path), "w", format="mp4")
    stream = container.add_stream("aac", rate=rate)
    for i in range(int(seconds * rate) // 1024):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, i * 1024
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return path


def write_wav(path: Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate), np.int16).tobytes())
    return path


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux `src` with the moov atom first, so a truncated copy still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        out_stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out_stream
                out.mux(packet)
    return dst


# ---------------------------------------------------------------- real clips


@pytest.mark.parametrize(
    "name, size, fps, n_frames, duration_s, codec",
    [
        ("testvideo.mp4", (1280, 720), "30000/1001", 720, 24.02, "h264"),
        ("fades.mp4", (480, 320), "25/1", 250, 10.0, "mpeg4"),
        ("counter.mp4", (1920, 1080), "10/1", 30, 3.0, "h264"),
    ],
)
def test_probe_shared_clips(shared_data, name, size, fps, n_frames, duration_s, codec):
    info = probe(shared_data / name)
    assert (info.width, info.height) == size
    assert info.fps_fraction == fps and info.fps == pytest.approx(float(Fraction(fps)))
    assert info.n_frames == n_frames
    assert info.duration_s == pytest.approx(duration_s, abs=0.01)
    assert info.codec == codec
    assert info.rotation == 0 and not info.vfr and not info.has_audio


@pytest.mark.parametrize("suffix", [".mkv", ".ts", ".h264"])  # .h264: no container duration, no timestamps
def test_probe_other_containers(tmp_path, suffix):
    info = probe(write_video(tmp_path / f"film{suffix}", 150, fps=25))
    assert info.n_frames == 150 and info.duration_s == pytest.approx(6.0, abs=0.05)
    assert info.fps_fraction == "25/1" and not info.vfr


def test_probe_rotation_swaps_displayed_size(tmp_path):
    info = probe(write_video(tmp_path / "rotated.mp4", 10, size=(64, 48), rotation=90))
    assert info.rotation == 90
    assert (info.width, info.height) == (48, 64)


def test_probe_variable_frame_rate_and_audio(tmp_path):
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = Fraction(1, 1000)
        audio = container.add_stream("aac", rate=16000)
        pts = 0
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 120 if i % 3 == 0 else 40  # every third frame lasts 3x longer
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for i in range(16):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, i * 1024
            container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    info = probe(path)
    assert info.vfr and info.has_audio
    assert info.n_frames == 40


def test_name_with_spaces_and_unicode(shared_data, tmp_path):
    odd = tmp_path / "my film é 🎬.mp4"
    shutil.copy(shared_data / "counter.mp4", odd)
    assert probe(odd).n_frames == 30
    assert film_id(odd, ProbeConfig()) == film_id(shared_data / "counter.mp4", ProbeConfig())


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(FilmError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_directory_is_not_a_film(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(FilmError, match="not a regular file"):
        probe(tmp_path / "folder.mp4")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(shared_data, tmp_path):
    locked = tmp_path / "locked.mp4"
    shutil.copy(shared_data / "counter.mp4", locked)
    locked.chmod(0)
    with pytest.raises(FilmError, match="permission denied"):
        probe(locked)


def test_unreadable_file_reason_as_root_too(shared_data, monkeypatch):
    monkeypatch.setattr("dataprep.probe.os.access", lambda path, mode: False)  # what a non-root user sees
    with pytest.raises(FilmError, match="permission denied"):
        probe(shared_data / "counter.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(FilmError, match=r"empty file \(0 bytes\)"):
        probe(tmp_path / "empty.mp4")


def test_random_bytes(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(FilmError, match="not a video container"):
        probe(tmp_path / "noise.mp4")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_image_renamed_mp4(tmp_path, image_format):
    path = tmp_path / "still.mp4"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path, format=image_format)
    with pytest.raises(FilmError, match="single still image"):
        probe(path)


@pytest.mark.parametrize("writer", [write_aac, write_wav], ids=["aac-in-mp4", "pcm-wav"])
def test_audio_only(tmp_path, writer):
    path = writer(tmp_path / "sound.mp4")
    with pytest.raises(FilmError, match="no video stream"):
        probe(path)


def test_truncated_mp4_moov_at_end(shared_data, tmp_path):
    data = (shared_data / "testvideo.mp4").read_bytes()  # mdat first, moov last
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(FilmError, match="not a video container"):
        probe(tmp_path / "half.mp4")


def test_truncated_mp4_moov_first_is_accepted(shared_data, tmp_path):
    # The index still promises 720 frames; the shot stage copes with the missing tail (test_shots).
    data = faststart_copy(shared_data / "testvideo.mp4", tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    assert probe(tmp_path / "half.mp4").n_frames == 720


def test_too_short(tmp_path):
    path = write_video(tmp_path / "blink.mp4", 3, fps=25)  # 0.12 s
    with pytest.raises(FilmError, match="too short"):
        probe(path, ProbeConfig(min_duration_s=0.2))


def test_single_frame_video(tmp_path):
    with pytest.raises(FilmError, match="single still image"):
        probe(write_video(tmp_path / "one.mp4", 1))


# ---------------------------------------------------------------- film_id


def test_film_id_is_content_based(shared_data, tmp_path):
    cfg = ProbeConfig(hash_bytes=4096)  # small, so head and tail hashes differ from a full hash
    original = film_id(shared_data / "testvideo.mp4", cfg)
    copy = tmp_path / "renamed copy.mp4"
    shutil.copy(shared_data / "testvideo.mp4", copy)
    assert film_id(copy, cfg) == original == film_id(shared_data / "testvideo.mp4", cfg)
    assert len(original) == 16 and int(original, 16) >= 0
    assert film_id(shared_data / "fades.mp4", cfg) != original

    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF  # one byte of the tail
    copy.write_bytes(bytes(data))
    assert film_id(copy, cfg) != original


def test_film_id_of_missing_file(tmp_path):
    with pytest.raises(FilmError, match="file not found"):
        film_id(tmp_path / "nope.mp4", ProbeConfig())
