"""Shot boundaries of a film, and the per-frame statistics the filter stage needs, in one decode.

We decode with PyAV ourselves (FFmpeg threads, frames scaled down to about
`ShotsConfig.downscale_width` by swscale inside the same call that converts them to BGR,
in a worker thread that decodes ahead) and hand each small frame straight to a
PySceneDetect detector. This skips PySceneDetect's `VideoStream`/`SceneManager` machinery
(full-size BGR frames, then a resize in OpenCV) and lets the same pass collect, per frame,
on the small grey image:

    luma[i]   = mean grey level of frame i (0-255)
    motion[i] = mean |grey_i - grey_{i-1}| (0-255), motion[0] = 0
    thumb[i]  = the BGR image shrunk to THUMB_SIZE (area average), kept for post-processing

The detector's cuts are then corrected on the thumbnails, without a second decode
(`dataprep.transitions`): cuts at flashes are dropped, and dissolves and fades through black,
which ContentDetector misses, become cuts at their midpoints.

Frames are numbered from 0 in the order the decoder outputs them (presentation order), which
is PySceneDetect's numbering for constant-frame-rate films. A film whose tail does not decode (a truncated download) keeps
the frames that did decode; a film with no decodable frame is a `FilmError`.

Damage the decoder hides (FFmpeg conceals a corrupt slice and goes on) is counted, not fixed:
`decode_errors` = error messages FFmpeg logged during the decode (e.g. "error while decoding
MB 51 0") plus a decode error that ended the stream early; `corrupt_frames` = frames FFmpeg
flagged as corrupt. Both go into films.parquet, so a user can filter damaged films.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, SceneDetector

from dataprep.config import ShotsConfig
from dataprep.errors import FilmError
from dataprep.probe import ProbeInfo, check_readable, frame_rate, open_container
from dataprep.transitions import drop_flashes, gradual_cuts

log = logging.getLogger(__name__)

# swscale kernel of the downscale. POINT (nearest) is the cheapest, and it reproduces the frame
# scores of PySceneDetect's own path (full-size BGR, then OpenCV INTER_LINEAR, which at a 5x
# shrink also reads single source pixels): on testvideo.mp4 the end-card frame 691 scores 26.9
# both ways, just under the default threshold 27, while FAST_BILINEAR/AREA smooth it over 27.
INTERPOLATION = "POINT"
THUMB_SIZE = (32, 18)  # (w, h) of the per-frame BGR thumbnails: 1.7 kB a frame (colour: counter.mp4's
# backgrounds change hue at the same grey level)
QUEUE_DEPTH = 8  # decoded frames buffered between the decode thread and the detector
_END = object()  # end of the decoded frames


@dataclass(frozen=True)
class ShotDetection:
    shots: list[tuple[int, int]]  # (start_frame, end_frame exclusive), tiling [0, n_frames)
    luma: np.ndarray  # (N,) float32 mean grey level per decoded frame, 0-255
    motion: np.ndarray  # (N,) float32 mean |grey_i - grey_{i-1}|, 0-255, motion[0] = 0
    n_frames: int  # N, frames actually decoded
    fps: float
    decode_errors: int = 0  # errors FFmpeg logged (or raised) while decoding
    corrupt_frames: int = 0  # decoded frames FFmpeg flagged as corrupt (concealed damage)

    @property
    def starts(self) -> list[int]:
        """First frame of every shot (0 first)."""
        return [start for start, _ in self.shots]


def detect_shots(path: str | Path, cfg: ShotsConfig = ShotsConfig(), info: ProbeInfo | None = None) -> ShotDetection:
    """Detect shots in the video at `path` in a single threaded, downscaled decode pass."""
    path = check_readable(path)
    container = open_container(path)
    try:
        if not container.streams.video:
            raise FilmError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: the decode is the hot loop
        stream.codec_context.thread_count = cfg.decode_threads  # 0 = FFmpeg picks
        fps = Fraction(info.fps_fraction) if info is not None else frame_rate(stream)
        width, height = scaled_size(stream.width, stream.height, cfg.downscale_width)
        detector = make_detector(cfg)
        counts = DecodeCounts()
        with counting_decode_errors(counts):
            cuts, luma, motion, thumbs = _scan(container, stream, detector, fps, width, height, path, counts)
    finally:
        container.close()

    n_frames = len(luma)
    if n_frames == 0:
        raise FilmError("no decodable video frames")
    luma = np.asarray(luma, dtype=np.float32)
    cuts = correct_cuts(cuts, np.stack(thumbs), luma, cfg)  # (N, 18, 32, 3) uint8
    return ShotDetection(
        shots=shots_from_cuts(cuts, n_frames),
        luma=luma,
        motion=np.asarray(motion, dtype=np.float32),
        n_frames=n_frames,
        fps=float(fps),
        decode_errors=counts.errors,
        corrupt_frames=counts.corrupt_frames,
    )


@dataclass
class DecodeCounts:
    errors: int = 0  # FFmpeg error messages logged, plus an exception that ended the decode
    corrupt_frames: int = 0


@contextlib.contextmanager
def counting_decode_errors(counts: DecodeCounts):
    """Count into `counts.errors` the error messages FFmpeg logs inside the block.

    FFmpeg conceals most damage and only logs it; PyAV's log capture sees messages from FFmpeg's
    own decode threads too (`local=False`), so a film task must decode one film at a time per
    process (Ray film tasks do). The previous log level is restored afterwards.
    """
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield counts
    finally:
        av.logging.set_level(previous)
    counts.errors += sum(1 for level, _name, _message in logs if level <= av.logging.ERROR)


def _scan(container, stream, detector: SceneDetector, fps: Fraction, width: int, height: int, path: Path,
          counts: DecodeCounts | None = None):
    """The hot loop: detect and measure each downscaled frame. Returns (cut frames, luma, motion, thumbnails)."""
    cuts: list[int] = []
    luma: list[float] = []
    motion: list[float] = []
    thumbs: list[np.ndarray] = []  # (18, 32, 3) uint8 each
    previous = None  # (height, width) uint8 grey of the previous frame
    index = 0
    with contextlib.closing(downscaled_frames(container, stream, width, height, path, counts)) as frames:
        for index, bgr in enumerate(frames):  # bgr: (height, width, 3) uint8
            grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # (height, width) uint8
            luma.append(cv2.mean(grey)[0])
            motion.append(0.0 if previous is None else cv2.mean(cv2.absdiff(grey, previous))[0])
            thumbs.append(cv2.resize(bgr, THUMB_SIZE, interpolation=cv2.INTER_AREA))
            previous = grey
            cuts += [tc.frame_num for tc in detector.process_frame(FrameTimecode(index, fps), bgr)]
    if luma:
        cuts += [tc.frame_num for tc in detector.post_process(FrameTimecode(index, fps))]
    return cuts, luma, motion, thumbs


def correct_cuts(cuts: list[int], thumbs: np.ndarray, luma: np.ndarray, cfg: ShotsConfig) -> list[int]:
    """The detector's cuts, less those at flashes, plus the midpoints of gradual transitions.

    thumbs: (N, h, w, 3) uint8 BGR thumbnails; luma: (N,) mean grey level per frame.
    """
    cuts = sorted({c for c in cuts if 0 < c < len(thumbs)})
    if cfg.flash_filter:
        cuts = drop_flashes(cuts, thumbs, cfg.flash_return, cfg.flash_frames)
    if cfg.gradual:
        cuts = sorted(cuts + gradual_cuts(cuts, thumbs, luma, cfg))
    return cuts


def downscaled_frames(container, stream, width: int, height: int, path: Path,
                      counts: DecodeCounts | None = None) -> Iterator[np.ndarray]:
    """BGR frames (height, width, 3) uint8 in decode order, decoded and scaled in a worker thread.

    PyAV decodes and swscale scales without holding the GIL, so the next frames are being decoded
    while the caller runs the detector (as PySceneDetect's SceneManager does). A decode error ends
    the stream early (a truncated or corrupt tail): it is logged (and counted in `counts`), the
    frames before it stand; frames FFmpeg flags as corrupt are counted in `counts`.
    Close the generator (it is, by `_scan`) before closing the container: that stops the worker.
    """
    queue_: queue.Queue = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item) -> bool:  # False once the consumer has gone away
        while not stop.is_set():
            try:
                queue_.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for frame in container.decode(stream):
                if counts is not None and frame.is_corrupt:
                    counts.corrupt_frames += 1
                if not put(frame.to_ndarray(width=width, height=height, format="bgr24", interpolation=INTERPOLATION)):
                    return
        except BaseException as e:  # handed to the consumer below
            failure.append(e)
        put(_END)

    worker = threading.Thread(target=work, name=f"decode {path.name}", daemon=True)
    worker.start()
    n_frames = 0
    try:
        while (bgr := queue_.get()) is not _END:
            yield bgr
            n_frames += 1
    finally:
        stop.set()
        worker.join()
    if failure and isinstance(failure[0], av.FFmpegError):
        if counts is not None:
            counts.errors += 1
        log.warning("%s: decoding stopped after %d frames: %s", path.name, n_frames, failure[0])
    elif failure:
        raise failure[0]


def make_detector(cfg: ShotsConfig) -> SceneDetector:
    """A fresh PySceneDetect detector for one film (detectors keep per-film state)."""
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.threshold, min_scene_len=cfg.min_shot_frames)
    if cfg.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=cfg.threshold / 9.0, min_scene_len=cfg.min_shot_frames)
    raise ValueError(f"unknown detector {cfg.detector!r}, expected 'content' or 'adaptive'")


def scaled_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) about `target_width` wide with the same aspect, both even; never upscales."""
    if width <= 0 or height <= 0:
        raise FilmError(f"invalid frame size {width}x{height}")
    if width <= target_width:
        return width, height
    scaled_height = max(2, round(height * target_width / width / 2) * 2)
    return target_width, scaled_height


def shots_from_cuts(cuts: list[int], n_frames: int) -> list[tuple[int, int]]:
    """Cut frames (first frame of each new shot) -> shots (start, end exclusive) tiling [0, n_frames)."""
    starts = sorted({c for c in cuts if 0 < c < n_frames})
    edges = [0, *starts, n_frames]
    return list(zip(edges[:-1], edges[1:]))

