"""Video bytes <-> uint8 frame arrays, for training samples and generated scenes.

    frames = decode_clip(mp4_bytes, frames=8, fps=8.0, size=(32, 32), start=0.0)  # (F, H, W, 3) uint8
    mp4 = encode_mp4(frames, fps=8.0)                                              # H.264 bytes
    sheet = frames_sheet([("shot 0: prompt", frames), ...], title="...")          # PIL image

`decode_clip` takes F frames at `fps` starting `start` seconds into the clip (nearest source
frame for each target time), resized (cover + centre crop) to `size` = (H, W). A clip shorter
than the window repeats its last frame; `ClipError` explains an unreadable or empty clip.
"""

from __future__ import annotations

import io
import textwrap
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from dataprep.keyframes import cover_size
from dataprep.keyframes import fit as centre_crop
from dataprep.sheets import draw_sheet

THUMB = 96


class ClipError(ValueError):
    """An mp4 in a sample cannot be decoded into frames."""


def read_frames(mp4: bytes) -> tuple[list[np.ndarray], float]:
    """All RGB frames of an in-memory video and its frame rate."""
    try:
        with av.open(io.BytesIO(mp4)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, ValueError) as err:
        raise ClipError(f"cannot decode the shot video ({len(mp4)} bytes): {err}") from err
    if not frames:
        raise ClipError(f"the shot video ({len(mp4)} bytes) has no frames")
    return frames, rate


def fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to cover (H, W) keeping the aspect ratio, then centre-crop to exactly (H, W) (as curation does)."""
    h, w = size
    src_h, src_w = frame.shape[:2]
    if (src_h, src_w) == (h, w):
        return frame
    cover_w, cover_h = cover_size(src_w, src_h, w, h)
    return centre_crop(np.asarray(Image.fromarray(frame).resize((cover_w, cover_h), Image.BILINEAR)), w, h)


def window_indices(n_src: int, src_fps: float, frames: int, fps: float, start: float) -> list[int]:
    """Source frame index for each of `frames` target times start + k / fps (clamped to the clip)."""
    return [min(n_src - 1, max(0, round((start + k / fps) * src_fps))) for k in range(frames)]


def clip_duration(mp4: bytes) -> float:
    frames, rate = read_frames(mp4)
    return len(frames) / rate


def decode_clip(mp4: bytes, frames: int, fps: float, size: tuple[int, int], start: float = 0.0) -> np.ndarray:
    """(F, H, W, 3) uint8: `frames` frames at `fps` from `start` seconds, fitted to `size`."""
    src, src_fps = read_frames(mp4)
    picks = window_indices(len(src), src_fps, frames, fps, start)
    return np.stack([fit(src[i], size) for i in picks])


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """(F, H, W, 3) uint8 -> H.264 mp4 bytes (yuv444 would not play everywhere: sizes are made even)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")
            for packet in stream.encode(video_frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def frames_sheet(rows: list[tuple[str, np.ndarray]], title: str = "", k: int = 4) -> Image.Image:
    """A contact sheet: one row per shot (k evenly spaced frames + its label), `title` on top."""
    picked = []
    for label, frames in rows:
        picks = np.linspace(0, len(frames) - 1, k).round().astype(int)
        picked.append((textwrap.wrap(label, 55)[:7], [frames[i] for i in picks]))
    return draw_sheet(title, picked, k, thumb=THUMB, resample=Image.NEAREST)
