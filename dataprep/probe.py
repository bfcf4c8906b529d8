"""Probe a film: what its container says, checked against what actually decodes.

`probe` reads the container with PyAV and, in one pass from the start, demuxes a short
sample of packets (timestamps, to spot variable frame rate) and decodes the first frame
(proof that the video decodes, and its display rotation). It never lets a raw PyAV exception escape for bad input: every
kind of bad file becomes a `FilmError` with a short reason, in the order checked:

    "file not found" / "not a regular file" / "permission denied" / "empty file (0 bytes)"
    "not a video container"        random bytes, truncated mp4 with the moov atom at the end
    "no video stream"              audio-only files
    "single still image, not a video"   a PNG/JPEG renamed .mp4 (FFmpeg opens it as 1 frame)
    "no decodable video frames"
    "too short: ..."               duration below `ProbeConfig.min_duration_s`

`film_id` names a film by its bytes (size + head + tail), so the same film under another
name or URI gets the same id, and re-runs give the same keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dataprep.config import ProbeConfig
from dataprep.errors import FilmError

VFR_SAMPLE_PACKETS = 120  # packets demuxed to check that timestamps are evenly spaced
REORDER_SLACK = 16  # B-frames: the last packets of a cut-off sample may skip presentation times
IMAGE_DEMUXERS = ("image2", "image2pipe")  # plus every "*_pipe" (png_pipe, jpeg_pipe, ...)


@dataclass(frozen=True)
class ProbeInfo:
    duration_s: float
    fps: float
    fps_fraction: str  # exact, e.g. "30000/1001"
    n_frames: int  # from the container when it says, else round(duration_s * fps)
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # degrees counter-clockwise, in {0, 90, 180, 270}
    codec: str
    vfr: bool  # variable frame rate: rates disagree or sampled timestamps are irregular
    has_audio: bool


def probe(path: str | Path, cfg: ProbeConfig = ProbeConfig()) -> ProbeInfo:
    """Container facts of the video file at `path`; `FilmError` for anything not a usable video."""
    path = check_readable(path)
    container = open_container(path)
    try:
        return _probe_open(container, cfg)
    except av.FFmpegError as e:
        raise FilmError(f"unreadable video: {e}") from e
    finally:
        container.close()


def _probe_open(container, cfg: ProbeConfig) -> ProbeInfo:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise FilmError(f"no video stream (streams: {', '.join(kinds)})")
    fmt = container.format.name
    if fmt in IMAGE_DEMUXERS or fmt.endswith("_pipe"):
        raise FilmError(f"single still image, not a video (FFmpeg reads it as {fmt!r})")
    stream = container.streams.video[0]
    rate = frame_rate(stream)

    first, pts, n_sampled = sample_stream(container, stream)  # one demux pass from the start, no seeking
    duration_s = stream_duration(container, stream, n_sampled, rate)
    n_frames = stream.frames or round(duration_s * rate)

    rotation = int(first.rotation or 0) % 360
    if rotation not in (0, 90, 180, 270):
        rotation = 0  # an arbitrary display matrix (shear, odd angle): shown as decoded
    tag = stream.metadata.get("rotate", "")  # old-style tag written by FFmpeg < 6
    if rotation == 0 and tag.lstrip("-").isdigit() and int(tag) % 90 == 0:
        rotation = int(tag) % 360
    width, height = (stream.height, stream.width) if rotation in (90, 270) else (stream.width, stream.height)

    if n_frames <= 1:
        raise FilmError(f"single still image, not a video (the stream has {n_frames} frames)")
    if duration_s < cfg.min_duration_s:
        raise FilmError(f"too short: {duration_s:.3f} s < min_duration_s {cfg.min_duration_s} s")
    return ProbeInfo(
        duration_s=duration_s,
        fps=float(rate),
        fps_fraction=f"{rate.numerator}/{rate.denominator}",
        n_frames=int(n_frames),
        width=width,
        height=height,
        rotation=rotation,
        codec=stream.codec_context.name,
        vfr=is_vfr(stream, pts, rate),
        has_audio=bool(container.streams.audio),
    )


def check_readable(path: str | Path) -> Path:
    """`path` as a Path if it is a non-empty readable regular file, else a `FilmError`."""
    path = Path(path)
    if not path.exists():
        raise FilmError(f"file not found: {path}")
    if not path.is_file():
        raise FilmError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise FilmError(f"permission denied: {path}")
    if path.stat().st_size == 0:
        raise FilmError(f"empty file (0 bytes): {path}")
    return path


def open_container(path: Path):
    """`av.open` with its failures turned into reasons a user can act on."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except PermissionError as e:
        raise FilmError(f"permission denied: {path}") from e
    except av.InvalidDataError as e:
        raise FilmError(f"not a video container (FFmpeg: invalid data): {path.name}") from e
    except (av.FFmpegError, OSError) as e:
        raise FilmError(f"not a video container ({e})") from e


def frame_rate(stream) -> Fraction:
    """The nominal frame rate: average, else guessed, else base; `FilmError` when none is known."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    raise FilmError("unknown frame rate (the container gives none)")


def sample_stream(container, stream, n: int = VFR_SAMPLE_PACKETS) -> tuple[av.VideoFrame, list[int], int]:
    """(first decoded frame, timestamps of the first `n` video packets, packets demuxed).

    Raw streams (.h264) have packets without timestamps: they are counted, not listed.
    Demuxes from the start, decoding only until the first frame comes out; no decoded
    frame at all is `FilmError("no decodable video frames")`.
    """
    first, pts, n_packets = None, [], 0
    try:
        for packet in container.demux(stream):
            n_packets += packet.size > 0
            if packet.size and packet.pts is not None:
                pts.append(packet.pts)
            if first is None:
                first = next(iter(packet.decode()), None)  # the empty end packet flushes the decoder
            if first is not None and n_packets >= n:
                break
    except av.FFmpegError as e:
        if first is None:
            raise FilmError(f"no decodable video frames ({e})") from e
    if first is None:
        raise FilmError("no decodable video frames")
    return first, pts, n_packets


def stream_duration(container, stream, n_sampled: int, rate: Fraction) -> float:
    """Seconds: the stream's own duration, else the container's, else counted packets / fps."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    if n_sampled < VFR_SAMPLE_PACKETS:  # the sample saw the whole stream
        return n_sampled / float(rate)
    rest = sum(1 for p in container.demux(stream) if p.size)  # demuxing goes on where the sample stopped
    return (n_sampled + rest) / float(rate)


def is_vfr(stream, pts: list[int], rate: Fraction) -> bool:
    """True when the rates disagree by > 1 %, or sampled frame intervals vary by > 1 tick and 10 %."""
    guessed = stream.guessed_rate or stream.base_rate
    if guessed and abs(float(guessed) - float(rate)) > 0.01 * float(rate):
        return True
    ordered = np.sort(np.asarray(pts, dtype=np.int64))  # (n,) presentation order
    if len(pts) >= VFR_SAMPLE_PACKETS:  # a cut-off sample: its tail has gaps filled by later packets
        ordered = ordered[: len(ordered) - REORDER_SLACK]
    if len(ordered) < 3:
        return False
    steps = np.diff(ordered)  # (n-1,) in time_base ticks
    median = float(np.median(steps))
    return bool(np.abs(steps - median).max() > max(1.0, 0.1 * median))


def film_id(path: str | Path, cfg: ProbeConfig = ProbeConfig()) -> str:
    """16 hex chars of blake2b over (size, first `hash_bytes`, last `hash_bytes`) of the file."""
    path = check_readable(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=8)
    digest.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        digest.update(f.read(cfg.hash_bytes))
        if size > cfg.hash_bytes:
            f.seek(max(cfg.hash_bytes, size - cfg.hash_bytes))
            digest.update(f.read(cfg.hash_bytes))
    return digest.hexdigest()
