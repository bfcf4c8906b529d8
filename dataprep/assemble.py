"""Assemble a curated film into scene samples and manifest rows.

Scene key = scene_id = `{film_id}-{scene_index:05d}`; shot `i` of a scene is `{i:03d}.mp4`.
Everything here is a pure function of the film's results, so the same film always gives
the same keys and bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from dataprep.film import FilmResult
from dataprep.dataset import encode_sample, npy_bytes
from dataprep.shards import FilmEntry


@dataclass(frozen=True)
class Captions:
    shots: list[str]  # one per kept shot; "" (source `none`) when no captioner gave one
    sources: list[str]  # sidecar | vlm | coca | none
    scene_globals: list[str]  # one per scene; "" when none of its shots has a caption either
    scene_status: list[str] = field(default_factory=list)  # per scene: SCENE_CAPTIONED | ... (caption_film)


def uri_id(uri: str) -> str:
    """film_id of a film whose content could not be read: derived from its URI instead."""
    return "uri-" + hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()


def scene_id(film_id: str, scene_index: int) -> str:
    return f"{film_id}-{scene_index:05d}"


def film_row(result: FilmResult, status: str, error: str | None, n_shots: int = 0, n_scenes: int = 0) -> dict:
    info = result.info
    return {
        "film_id": result.film_id or uri_id(result.uri),
        "uri": result.uri,
        "status": status,
        "error": error,
        "duration_s": info.duration_s if info else None,
        "fps": info.fps if info else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "codec": info.codec if info else None,
        "n_frames": result.n_frames or None,
        "n_detected": result.n_detected,
        "decode_errors": result.decode_errors,
        "corrupt_frames": result.corrupt_frames,
        "n_shots": n_shots,
        "n_scenes": n_scenes,
        "shard": None,
    }


def build_film(
    result: FilmResult,
    embeddings: np.ndarray,
    scenes: list[list[int]],
    captions: Captions,
    min_shots: int,
    versions: dict,
) -> FilmEntry:
    """Samples and rows of one ok film. embeddings: (N_kept, D); scenes: lists of kept-shot indices."""
    kept = result.kept
    if not (len(kept) == len(result.clips) == len(embeddings) == len(captions.shots)):
        raise AssertionError(
            f"{len(kept)} kept spans, {len(result.clips)} clips, {len(embeddings)} embeddings, "
            f"{len(captions.shots)} captions"
        )
    fps = result.fps
    placed: dict[int, tuple[str, int]] = {}  # kept index -> (scene_id, shot_index)
    samples = []
    for scene_no, scene in enumerate(scenes):
        if len(scene) < min_shots:
            continue
        sid = scene_id(result.film_id, len(samples))
        shots_meta = []
        for i, k in enumerate(scene):
            span = kept[k]
            placed[k] = (sid, i)
            shots_meta.append(
                {
                    "shot_index": i,
                    "start_frame": span.start_frame,
                    "end_frame": span.end_frame,
                    "start_s": round(span.start_frame / fps, 6),
                    "end_s": round(span.end_frame / fps, 6),
                    "caption": captions.shots[k],
                    "caption_source": captions.sources[k],
                }
            )
        meta = {
            "film_id": result.film_id,
            "uri": result.uri,
            "scene_index": len(samples),
            "fps": fps,
            "global_caption": captions.scene_globals[scene_no],
            "shots": shots_meta,
            "versions": versions,
        }
        clip = embeddings[scene].astype(np.float16)  # (n_shots, D)
        mp4s = [result.clips[k].mp4 for k in scene]
        samples.append(encode_sample(sid, json.dumps(meta, sort_keys=True).encode(), mp4s, npy_bytes(clip)))

    kept_index = {id(s): k for k, s in enumerate(kept)}
    rows = []
    for n, span in enumerate(result.spans):
        k = kept_index.get(id(span))  # None: dropped by the filters
        caption = None if k is None else (captions.shots[k], captions.sources[k], embeddings[k])
        rows.append(shot_row(result, n, span, placed.get(k), caption))
    n_shots = sum(1 for r in rows if r["kept"])
    return FilmEntry(samples, film_row(result, "ok", None, n_shots, len(samples)), rows)


def shot_row(result: FilmResult, n: int, span, placed: tuple[str, int] | None = None, caption=None) -> dict:
    """The shots.parquet row of candidate shot n: `placed` = (scene_id, shot_index) when written into a
    scene, `caption` = (text, source, clip embedding) when it was kept by the filters."""
    text, source, clip = caption if caption is not None else (None, None, None)
    return {
        "film_id": result.film_id,
        "scene_id": placed[0] if placed else None,
        "shot_index": placed[1] if placed else None,
        "film_shot_index": n,
        "detected_shot": span.parent_shot,
        "start_frame": span.start_frame,
        "end_frame": span.end_frame,
        "start_s": span.start_frame / result.fps,
        "end_s": span.end_frame / result.fps,
        "caption": text,
        "caption_source": source,
        "clip": clip.astype(np.float32).tolist() if clip is not None else None,
        "shard": None,
        "kept": placed is not None,
        "drop_reason": span.drop_reason or (None if placed else "scene_too_small"),
    }


def dropped_rows(result: FilmResult) -> list[dict]:
    """Shot rows of a film that wrote no scene: every candidate shot with why it was not kept."""
    return [shot_row(result, n, span) for n, span in enumerate(result.spans)]
