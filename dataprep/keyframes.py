"""Keyframes and re-encoded shot clips at the curated size, in one decode pass per film.

For every kept span the film's frames are resampled to the curated fps (nearest earlier
source frame), resized to cover the curated size and centre-cropped, and encoded as an
H.264 mp4 in memory. `cfg.keyframes` evenly spaced frames of each span are kept as arrays
for the embed and caption stages. Frame indices are decode order, as in the shot stage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from dataprep.config import ClipConfig
from dataprep.errors import FilmError
from dataprep.media import centre_crop, cover_size


@dataclass(frozen=True)
class ShotClip:
    mp4: bytes  # H.264 mp4 at the curated size and fps
    keyframes: np.ndarray  # (K, H, W, 3) uint8 RGB
    n_frames: int  # frames in the mp4


def keyframe_indices(start: int, end: int, k: int) -> list[int]:
    """k evenly spaced frame indices in [start, end), centred in k equal bins (repeats when end-start < k)."""
    n = end - start
    return [start + min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


def output_indices(start: int, end: int, fps_in: float, fps_out: float) -> list[int]:
    """Source frame index of each output frame when resampling [start, end) from fps_in to fps_out."""
    n_out = max(1, round((end - start) * fps_out / fps_in))
    return [min(end - 1, start + int(k * fps_in / fps_out)) for k in range(n_out)]


class _Mp4Writer:
    """H.264 mp4 in memory; single-threaded x264 so the bytes are deterministic."""

    def __init__(self, cfg: ClipConfig):
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        rate = Fraction(cfg.fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = cfg.width, cfg.height
        self.stream.pix_fmt = "yuv420p"
        # mbtree rate control made x264 output differ between identical runs (measured): off
        self.stream.options = {"crf": str(cfg.crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        self.stream.codec_context.thread_count = 1
        self.n = 0

    def add(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.n
        self.n += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> bytes:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()


def extract_clips(
    path: str, spans: list[tuple[int, int]], fps_in: float, cfg: ClipConfig, rotation: int = 0
) -> list[ShotClip | None]:
    """Re-encode each span [start, end) (sorted, disjoint) and take its keyframes, decoding the film once.

    `rotation` (degrees counter-clockwise, from the probe's display matrix) is applied so
    clips come out as the film is meant to be watched. Returns one entry per span; None for
    spans the decoder never finished (a truncated tail).
    """
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, got {rotation}")
    turns = rotation // 90
    if any(b <= a for a, b in spans) or any(b0 > a1 for (_, b0), (a1, _) in zip(spans, spans[1:])):
        raise ValueError(f"spans must be non-empty, sorted and disjoint, got {spans}")
    wanted_out = [output_indices(a, b, fps_in, cfg.fps) for a, b in spans]
    wanted_key = [keyframe_indices(a, b, cfg.keyframes) for a, b in spans]
    clips: list[ShotClip | None] = []
    if not spans:
        return clips

    current = 0  # index of the span being written
    writer: _Mp4Writer | None = None
    keys: list[np.ndarray] = []
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise FilmError(f"cannot reopen video for re-encoding: {e}") from e
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < spans[current][0]:
                    continue
                out_count = wanted_out[current].count(index)
                key_count = wanted_key[current].count(index)
                if out_count or key_count:
                    if size is None:  # decoded size that covers the curated size once rotated
                        shown = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
                        h, w = cover_size(shown, (cfg.height, cfg.width))       # (H, W) as shown
                        size = (w, h) if turns % 2 else (h, w)                    # (H, W) as decoded
                    rgb = frame.to_ndarray(width=size[1], height=size[0], format="rgb24")
                    rgb = centre_crop(np.rot90(rgb, turns) if turns else rgb, (cfg.height, cfg.width))
                    writer = writer or _Mp4Writer(cfg)
                    for _ in range(out_count):
                        writer.add(rgb)
                    keys += [rgb] * key_count
                if index == spans[current][1] - 1:
                    clips.append(ShotClip(writer.close(), np.stack(keys), writer.n))  # (K, H, W, 3)
                    writer, keys = None, []
                    current += 1
                    if current == len(spans):
                        break
        except av.FFmpegError as e:  # a truncated tail: keep the spans that finished
            if not clips:
                raise FilmError(f"decoding failed while re-encoding shots: {e}") from e
    return clips + [None] * (len(spans) - len(clips))
