"""Group adjacent kept shots into scenes.

A shot joins the current scene when it looks like one of the scene's last few shots
(shot / reverse-shot cutting alternates between framings) and follows it closely in time.
Similarity is CLIP cosine when pretrained CLIP weights are loaded (a random-init CLIP
says nothing about content), else the intersection of colour histograms, which needs no
weights. Scenes longer than `chunk_shots` are split into balanced chunks.
"""

from __future__ import annotations

import math

import numpy as np

from dataprep.config import SceneConfig

HIST_BINS = 8  # per RGB channel: 512-bin joint histogram
DEFAULT_THRESHOLD = {"histogram": 0.55, "clip": 0.8}
LOOKBACK = 3  # shots of the current scene a new shot is compared with


def colour_histogram(frames: np.ndarray) -> np.ndarray:
    """(K, H, W, 3) uint8 keyframes -> (512,) float32 joint RGB histogram summing to 1."""
    q = (frames.reshape(-1, 3) // (256 // HIST_BINS)).astype(np.int64)  # (K*H*W, 3)
    codes = (q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2]
    hist = np.bincount(codes, minlength=HIST_BINS**3).astype(np.float32)
    return hist / hist.sum()


def histogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection in [0, 1]; 1 = same colour distribution."""
    return float(np.minimum(a, b).sum())


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def split_balanced(indices: list[int], max_len: int) -> list[list[int]]:
    """Split a list into the fewest near-equal chunks no longer than max_len."""
    n = len(indices)
    chunks = math.ceil(n / max_len)
    edges = [n * k // chunks for k in range(chunks + 1)]
    return [indices[a:b] for a, b in zip(edges[:-1], edges[1:])]


def group_scenes(
    start_s: list[float], end_s: list[float], features: np.ndarray, method: str, cfg: SceneConfig
) -> list[list[int]]:
    """Partition shots 0..N-1 (in film order) into scenes of consecutive shots.

    features: (N, D) colour histograms (method "histogram") or CLIP embeddings ("clip").
    Returns lists of shot indices; every shot appears exactly once.
    """
    if method not in DEFAULT_THRESHOLD:
        raise ValueError(f"similarity method must be one of {sorted(DEFAULT_THRESHOLD)}, got {method!r}")
    n = len(start_s)
    if not (len(end_s) == n == len(features)):
        raise ValueError(f"got {n} starts, {len(end_s)} ends and {len(features)} feature rows")
    if n == 0:
        return []
    similarity = histogram_similarity if method == "histogram" else cosine_similarity
    threshold = cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLD[method]

    scenes = [[0]]
    for i in range(1, n):
        gap = start_s[i] - end_s[i - 1]
        best = max(similarity(features[i], features[j]) for j in scenes[-1][-LOOKBACK:])
        if gap > cfg.max_gap_s or best < threshold:
            scenes.append([i])
        else:
            scenes[-1].append(i)
    return [chunk for scene in scenes for chunk in split_balanced(scene, cfg.chunk_shots)]


def adjusted_rand_index(labels_true: list[int], labels_pred: list[int]) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = identical partitions)."""
    if len(labels_true) != len(labels_pred):
        raise ValueError(f"labelings differ in length: {len(labels_true)} vs {len(labels_pred)}")
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(labels_true) * (len(labels_true) - 1) / 2
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (all singletons or one cluster)
        return 1.0 if (t == p).all() or rows == cols else 0.0
    return (index - expected) / (maximum - expected)
