"""Everything done to one film on one CPU: probe -> shots -> filters -> clips + keyframes.

`process_film` is a pure function of (uri, config); `dataprep/run.py` runs it as a Ray
task. Bad input never raises out of it: a `FilmError` becomes a failed `FilmResult`
carrying the reason, so one bad film cannot stop the others.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from dataprep.config import CurateConfig
from dataprep.errors import FilmError
from dataprep.filters import Span, filter_shots
from dataprep.keyframes import ShotClip, extract_clips
from dataprep.probe import ProbeInfo, film_id, probe
from dataprep.shots import detect_shots
from dataprep.sidecar import Sidecar, find_sidecar
from dataprep.sources import is_url, local_copy


@dataclass
class FilmResult:
    uri: str
    film_id: str | None = None
    error: str | None = None
    info: ProbeInfo | None = None
    fps: float = 0.0
    n_frames: int = 0  # frames decoded by the shot stage
    n_detected: int = 0
    decode_errors: int = 0  # errors FFmpeg logged while decoding the film (concealed damage)
    corrupt_frames: int = 0  # decoded frames FFmpeg flagged as corrupt
    spans: list[Span] = field(default_factory=list)  # every candidate shot, kept or dropped
    clips: list[ShotClip] = field(default_factory=list)  # one per kept span, in order
    sidecar: Sidecar | None = None
    seconds: float = 0.0
    node: str | None = None  # the Ray node id that ran the film task (set by dataprep.run)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def kept(self) -> list[Span]:
        return [s for s in self.spans if s.kept]


def process_film(uri: str, cfg: CurateConfig, cache_dir: Path) -> FilmResult:
    """Curate one film up to (not including) embedding, captioning and scene grouping.

    A remote film (an fsspec URL) is copied into `cache_dir` for the duration of the call.
    """
    started = time.perf_counter()
    result = FilmResult(uri=uri)
    path = None
    try:
        path = local_copy(uri, cache_dir)
        result.film_id = film_id(path, cfg.probe)
        result.info = probe(path, cfg.probe)
        detection = detect_shots(path, cfg.shots, result.info)
        result.fps, result.n_frames = detection.fps, detection.n_frames
        result.n_detected = len(detection.shots)
        result.decode_errors, result.corrupt_frames = detection.decode_errors, detection.corrupt_frames
        spans = filter_shots(detection.shots, detection.luma, detection.motion, detection.fps, cfg.filters)
        kept = [(s.start_frame, s.end_frame) for s in spans if s.kept]
        clips = extract_clips(str(path), kept, detection.fps, cfg.clips, result.info.rotation)
        by_span = dict(zip(kept, clips))
        result.spans = [
            dataclasses.replace(s, drop_reason="decode_error")
            if s.kept and by_span[(s.start_frame, s.end_frame)] is None
            else s
            for s in spans
        ]
        result.clips = [c for c in clips if c is not None]
        if cfg.caption.use_sidecar:
            result.sidecar = find_sidecar(uri, cache_dir)
    except FilmError as e:
        result.error = e.reason
    except OSError as e:  # unreadable path, permission denied, unreachable remote URL ...
        result.error = f"{type(e).__name__}: {e}"
    finally:
        if path is not None and is_url(uri):
            path.unlink(missing_ok=True)  # a remote film's local copy lives only as long as this call
    result.seconds = time.perf_counter() - started
    return result
