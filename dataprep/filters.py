"""Which detected shots become training shots.

Pure functions over the shot list and the per-frame statistics the shot stage collected
in its single decode pass (mean luma, mean frame-to-frame difference). Shots longer than
`max_shot_s` are split into equal pieces no longer than it (as Panda-70M does); then every
piece is kept or dropped with one reason:

- `too_short`: shorter than `min_shot_s`
- `black`:     mean luma below `black_luma` (fades, black leader)
- `static`:    mean frame-to-frame difference below `static_diff` (title cards, freezes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dataprep.config import FilterConfig


@dataclass(frozen=True)
class Span:
    """One candidate training shot: frames [start_frame, end_frame) of the film."""

    start_frame: int
    end_frame: int
    parent_shot: int  # index of the detected shot it came from
    drop_reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def split_long(start: int, end: int, fps: float, max_shot_s: float) -> list[tuple[int, int]]:
    """Split [start, end) into the fewest equal pieces no longer than `max_shot_s`."""
    n_frames = end - start
    max_frames = max(1, math.floor(max_shot_s * fps))
    pieces = max(1, math.ceil(n_frames / max_frames))
    edges = [start + (n_frames * k) // pieces for k in range(pieces + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def drop_reason(luma: np.ndarray, motion: np.ndarray, fps: float, cfg: FilterConfig) -> str | None:
    """Why a piece with these per-frame stats (luma (N,), motion (N,)) is dropped, or None to keep it."""
    if len(luma) / fps < cfg.min_shot_s:
        return "too_short"
    if float(luma.mean()) < cfg.black_luma:
        return "black"
    # motion[0] of a piece compares with the previous piece's last frame (a cut): skip it
    if len(motion) < 2 or float(motion[1:].mean()) < cfg.static_diff:
        return "static"
    return None


def filter_shots(
    shots: list[tuple[int, int]], luma: np.ndarray, motion: np.ndarray, fps: float, cfg: FilterConfig
) -> list[Span]:
    """Split and filter detected shots; returns every piece in film order, kept or not."""
    if len(luma) != len(motion):
        raise ValueError(f"luma and motion must have one value per frame, got {len(luma)} and {len(motion)}")
    spans = []
    for parent, (start, end) in enumerate(shots):
        if not 0 <= start < end <= len(luma):
            raise ValueError(f"shot {parent} [{start}, {end}) is outside the {len(luma)} decoded frames")
        for a, b in split_long(start, end, fps, cfg.max_shot_s):
            spans.append(Span(a, b, parent, drop_reason(luma[a:b], motion[a:b], fps, cfg)))
    return spans
