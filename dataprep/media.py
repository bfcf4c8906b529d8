"""Frames <-> video bytes, and pictures of frames: the media code curation, training, generation
and evaluation share. Sizes are always (H, W), like the arrays.

    frames, fps = read_frames(mp4_bytes)                      # every RGB frame of an in-memory mp4
    clip = decode_clip(mp4_bytes, frames=8, fps=8.0, size=(32, 32), start=0.0)   # (F, H, W, 3) uint8
    mp4 = encode_mp4(clip, fps=8.0)                           # H.264 bytes
    picks = even_indices(len(frames), k=3)                    # k evenly spaced frame indices
    image = cover_crop(frame, (H, W))                         # resize to cover, centre-crop to (H, W)
    sheet = frames_sheet([("shot 0: prompt", clip), ...], title="...")          # PIL image

`decode_clip` takes F frames at `fps` starting `start` seconds into the clip (nearest source
frame for each target time), fitted to `size` with `cover_crop`. A clip shorter than the
window repeats its last frame; `ClipError` explains an unreadable or empty clip.

Curation writes its shot clips with its own single-threaded encoder (dataprep/keyframes.py:
deterministic shard bytes); `encode_mp4` is for generated and sampled videos.
"""

from __future__ import annotations

import io
import textwrap
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_W = 360          # width of the text column of a contact sheet
SHEET_THUMB = 96         # thumbnail side of a training / generation sheet


class ClipError(ValueError):
    """An in-memory video cannot be decoded into frames."""


# -- decoding ----------------------------------------------------------------------------------
def read_frames(mp4: bytes) -> tuple[list[np.ndarray], float]:
    """All RGB frames (H, W, 3) uint8 of an in-memory video, and its frame rate."""
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


def even_indices(n: int, k: int) -> list[int]:
    """k evenly spaced indices into n frames, first and last included (repeats when n < k)."""
    return [int(i) for i in np.linspace(0, n - 1, k).round().astype(int)] if n else []


def window_indices(n_src: int, src_fps: float, frames: int, fps: float, start: float) -> list[int]:
    """Source frame index for each of `frames` target times start + k / fps (clamped to the clip)."""
    return [min(n_src - 1, max(0, round((start + k / fps) * src_fps))) for k in range(frames)]


def decode_clip(mp4: bytes, frames: int, fps: float, size: tuple[int, int], start: float = 0.0) -> np.ndarray:
    """(F, H, W, 3) uint8: `frames` frames at `fps` from `start` seconds, fitted to size = (H, W)."""
    src, src_fps = read_frames(mp4)
    picks = window_indices(len(src), src_fps, frames, fps, start)
    return np.stack([cover_crop(src[i], size) for i in picks])


# -- resizing ------------------------------------------------------------------------------------
def cover_size(src: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(h, w): the smallest size with the aspect ratio of src = (H, W) that covers size = (H, W)."""
    (src_h, src_w), (height, width) = src, size
    scale = max(width / src_w, height / src_h)
    return max(height, round(src_h * scale)), max(width, round(src_w * scale))


def centre_crop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop an (h, w, 3) image that already covers size = (H, W) down to exactly that size."""
    (h, w), (height, width) = rgb.shape[:2], size
    y, x = (h - height) // 2, (w - width) // 2
    return rgb[y : y + height, x : x + width]


def cover_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to cover size = (H, W) keeping the aspect ratio (bilinear), then centre-crop to it (as curation does)."""
    if frame.shape[:2] == tuple(size):
        return frame
    h, w = cover_size(frame.shape[:2], size)
    return centre_crop(np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR)), size)


# -- encoding --------------------------------------------------------------------------------------
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


# -- contact sheets ----------------------------------------------------------------------------------
def draw_sheet(title: str, rows: list[tuple[list[str], list[np.ndarray]]], k: int,
               thumb: int, resample: int | None = None) -> Image.Image:
    """The contact-sheet layout: `title` wrapped on top, then one row per entry of `rows` =
    (its text lines, its thumbnails: at most k frames, each resized to thumb x thumb)."""
    font = ImageFont.load_default()
    header = textwrap.wrap(title, 110)[:4]
    top = 14 * len(header) + 8
    sheet = Image.new("RGB", (k * thumb + CAPTION_W, top + max(1, len(rows)) * (thumb + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((4, 4 + 14 * i), line, fill="black", font=font)
    for row, (lines, frames) in enumerate(rows):
        y = top + row * (thumb + 4)
        for j, frame in enumerate(frames[:k]):
            sheet.paste(Image.fromarray(frame).resize((thumb, thumb), resample), (j * thumb, y))
        for n, line in enumerate(lines):
            draw.text((k * thumb + 6, y + 4 + 14 * n), line, fill="black", font=font)
    return sheet


def frames_sheet(rows: list[tuple[str, np.ndarray]], title: str = "", k: int = 4) -> Image.Image:
    """A sheet of generated / sampled shots: one row per shot (k evenly spaced frames + its label).

    A shot shorter than k frames shows each of its frames once (a 1-frame shot: one tile, not k
    copies of it), and the sheet is only as wide as its longest shot needs.
    """
    k = max(1, min(k, max((len(frames) for _, frames in rows), default=1)))
    picked = [(textwrap.wrap(label, 55)[:7], [frames[i] for i in even_indices(len(frames), min(k, len(frames)))])
              for label, frames in rows]
    return draw_sheet(title, picked, k, thumb=SHEET_THUMB, resample=Image.NEAREST)
