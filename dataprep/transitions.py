"""Corrections of a cut detector's output, computed on tiny thumbnails of every frame.

ContentDetector compares consecutive frames, so it misses gradual transitions (each step of a
dissolve or a fade is small) and fires on a flash (one or two bright frames inside a shot).
These pure functions fix both from thumbnails `thumbs`, (N, h, w, C) uint8, one per frame
(kept as uint8 and converted to float a window at a time: a feature film has ~170K frames), the mean grey level `luma` (N,) of each frame, and the detector's cut frames (first frame
of each new shot). Differences of thumbnails are mean |difference| over pixels and channels.

- `drop_flashes`: a cut at c is a flash when frame c-1 reappears within a few frames after c
  (closer to it than a fraction of the jump at c): the picture came back, so no shot started.
- `fade_cuts`: a run of near-black frames that the luma reaches gradually from both sides is a
  fade through black; the cut is at the middle of the run.
- `dissolve_cuts`: a window of W frames without a cut whose two ends differ strongly, and whose
  inner frames are each close to a blend (1-α)·thumb[a] + α·thumb[b] with α rising from 0 to 1,
  is a dissolve; the cut is the first frame with α >= 0.5. A pan or a moving character also
  changes the ends strongly, but its inner frames are not blends of the ends: the blend
  residual tells most of them apart; and a dissolve is a transient, between steadier shots: the
  change over the W frames before and after the window is a fraction of the change across it
  (a steady pan over a periodic texture passes the blend test, not this one). A fade in or out
  of one picture is a blend too (with black): when one end is the other one scaled, it is no
  dissolve.

A gradual transition's boundary is its midpoint, as in `dataprep.synthetic`'s ground truth.
"""

from __future__ import annotations

import numpy as np

from dataprep.config import ShotsConfig

CHUNK = 4096  # frames whose differences are computed at once (bounds the float32 temporaries)
MAX_ALPHA_DROP = 0.15  # a dissolve's blend weight α may fall back this much between frames (noise), no more


def drop_flashes(cuts: list[int], thumbs: np.ndarray, max_return: float, frames: int) -> list[int]:
    """`cuts` less flashes: cuts c where a frame in c+1 .. c+frames differs from frame c-1 by less than
    `max_return` times the jump from c-1 to c."""
    kept = []
    for c in cuts:
        near = thumbs[max(0, c - 1) : c + 1 + frames].astype(np.float32)  # (k+2, h, w, C): c-1, c, after
        after = near[2:]
        if 0 < c and len(after):
            jump = np.abs(near[1] - near[0]).mean()
            back = np.abs(after - near[0]).reshape(len(after), -1).mean(axis=1).min()
            if back < max_return * jump:
                continue
        kept.append(c)
    return kept


def fade_cuts(cuts: list[int], luma: np.ndarray, black: float, context: int) -> list[int]:
    """Middles of the runs of frames with `luma` < `black` reached gradually from both sides: within
    `context` frames on each side a frame is brighter than 2·`black` and twice as bright as the
    run's neighbour (a dip, not a black opening or ending, nor a flicker); unless one of `cuts` is
    in the run or within `context` frames of it (the detector split there already)."""
    dark = np.concatenate([[False], luma < black, [False]])
    edges = np.flatnonzero(np.diff(dark.astype(np.int8)))  # run i is [edges[2i], edges[2i+1])
    found = []
    for start, end in zip(edges[::2], edges[1::2]):
        before, after = luma[max(0, start - context) : start], luma[end : end + context]
        if not (len(before) and len(after)) or any(start - context <= c <= end + context for c in cuts):
            continue
        if before.max() > 2 * max(black, before[-1]) and after.max() > 2 * max(black, after[0]):
            found.append(int(start + end) // 2)
    return found


def blend_fit(window: np.ndarray) -> tuple[np.ndarray, float]:
    """(α per frame, residual) of window (W+1, h, w, C) as blends of its first and last frames.

    α[m] is the least-squares weight of the last frame in frame m; the residual is the mean
    |frame - blend| over the inner frames (0-255).
    """
    window = window.astype(np.float32)
    first, last = window[0].ravel(), window[-1].ravel()
    step = last - first  # (P,)
    x = window.reshape(len(window), -1) - first  # (W+1, P)
    alpha = x @ step / max(float(step @ step), 1e-6)  # (W+1,)
    residual = np.abs(x - alpha[:, None] * step).mean(axis=1)[1:-1].mean()
    return alpha, float(residual)


def gain_residual(x: np.ndarray, y: np.ndarray) -> float:
    """Mean |y - g·x| for the least-squares gain g: small when y is x brightened or darkened."""
    x, y = x.ravel().astype(np.float32), y.ravel().astype(np.float32)
    gain = float(x @ y) / max(float(x @ x), 1e-6)
    return float(np.abs(y - gain * x).mean())


def dissolve_cuts(cuts: list[int], thumbs: np.ndarray, luma: np.ndarray, cfg: ShotsConfig) -> list[tuple[int, float]]:
    """(cut frame, end difference) of every window [a, a+W] that looks like a dissolve, W = cfg.gradual_frames."""
    w = cfg.gradual_frames
    n = len(thumbs)
    if n <= w:
        return []
    ends = np.concatenate([  # (N-W,) |thumb[a+W] - thumb[a]|, a chunk of frames at a time
        np.abs(thumbs[i + w : j + w].astype(np.float32) - thumbs[i:j]).reshape(j - i, -1).mean(axis=1)
        for i, j in ((i, min(i + CHUNK, n - w)) for i in range(0, n - w, CHUNK))
    ])
    padded = np.concatenate([np.zeros(w), ends, np.zeros(w)])
    around = np.maximum(padded[: len(ends)], padded[2 * w :])  # (N-W,) the same over [a-W, a] and [a+W, a+2W]
    cut_marks = np.zeros(n + 1, dtype=np.int32)
    cut_marks[[c for c in cuts if c < n]] = 1
    cuts_upto = np.cumsum(cut_marks)  # cuts_upto[f] = cuts at frames <= f
    found = []
    for a in np.flatnonzero((ends > cfg.dissolve_diff) & (ends > cfg.dissolve_prominence * around)):
        b = a + w
        if cuts_upto[b] - cuts_upto[a] or min(luma[a], luma[b]) < cfg.fade_luma:
            continue  # a cut inside, or one end black: the half of a fade, left to `fade_cuts`
        if gain_residual(thumbs[a], thumbs[b]) < cfg.dissolve_residual * ends[a]:
            continue  # one end is the other one darker or brighter: a fade in or out of one picture
        alpha, residual = blend_fit(thumbs[a : b + 1])
        if residual > cfg.dissolve_residual * ends[a] or np.diff(alpha).min() < -MAX_ALPHA_DROP:
            continue
        found.append((int(a + np.argmax(alpha >= 0.5)), float(ends[a])))
    return found


def gradual_cuts(cuts: list[int], thumbs: np.ndarray, luma: np.ndarray, cfg: ShotsConfig) -> list[int]:
    """New cuts at fades and dissolves, each at least cfg.min_shot_frames from every other cut."""
    candidates = [(c, np.inf) for c in fade_cuts(cuts, luma, cfg.fade_luma, cfg.gradual_frames)]
    candidates += sorted(dissolve_cuts(cuts, thumbs, luma, cfg), key=lambda cs: -cs[1])  # strongest first
    taken, new = list(cuts), []
    for c, _ in candidates:
        if 0 < c < len(thumbs) and all(abs(c - t) >= cfg.min_shot_frames for t in taken):
            taken.append(c)
            new.append(c)
    return sorted(new)
