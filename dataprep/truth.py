"""How well curation found the synthetic ground truth: shot-boundary F1 and scene ARI.

    scores = score_dataset(DIR)     # None when no film of DIR has a `<name>.truth.json` beside it

Made for `lct demo`'s report (the films come from `lct synth`, whose truth lies beside each
mp4), usable on any dataset whose films carry such a file. Two pure functions do the scoring:

- `shot_scores`: the detector's cuts (the first frame of every detected shot but the first;
  splits of a long shot are not cuts) against the true hard cuts, one-to-one within ±tol
  frames (`synthetic.cut_f1`). A predicted cut inside a gradual transition or on a flash is
  neither right nor wrong (`synthetic.ambiguous_frames`) and is left out.
- `scene_labels`: for every shot written into a scene, its true scene (the one holding the
  shot's middle frame) and its curated scene_id; `adjusted_rand_index` of the two labelings is
  1 for the same partition whatever the names, ~0 for a chance one.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from dataprep.scenes import adjusted_rand_index
from dataprep.synthetic import ambiguous_frames, cut_f1, hard_cuts, load_truth


def detected_cuts(shots: list[dict]) -> list[int]:
    """Cut frames of one film's manifest rows: where each detected shot starts, frame 0 excluded."""
    starts: dict[int, int] = {}
    for row in shots:
        key = row["detected_shot"]
        starts[key] = min(starts.get(key, row["start_frame"]), row["start_frame"])
    return sorted(s for s in starts.values() if s > 0)


def scorable_cuts(shots: list[dict], truth: dict, tol: int) -> tuple[list[int], list[int]]:
    """(predicted, true) cut frames of one film, predictions on ambiguous frames left out."""
    true = hard_cuts(truth)
    unclear = ambiguous_frames(truth)
    pred = [c for c in detected_cuts(shots)
            if any(abs(c - t) <= tol for t in true) or not any(abs(c - f) <= tol for f in unclear)]
    return pred, true


def shot_scores(films: list[tuple[list[dict], dict]], tol: int = 1) -> tuple[float, float, float]:
    """(precision, recall, f1) of the detected cuts of several (manifest rows, truth) films, pooled."""
    pred_all, true_all, offset = [], [], 0
    for shots, truth in films:
        pred, true = scorable_cuts(shots, truth, tol)
        pred_all += [c + offset for c in pred]
        true_all += [c + offset for c in true]
        offset += truth["n_frames"] + 2 * tol + 1  # films never match across each other
    return cut_f1(pred_all, true_all, tol)


def scene_labels(shots: list[dict], truth: dict) -> tuple[list[int], list[str]]:
    """(true scene index, curated scene_id) of every shot of one film written into a scene."""
    true, curated = [], []
    for row in shots:
        if not row.get("scene_id"):
            continue
        middle = (row["start_frame"] + row["end_frame"]) // 2
        index = next((i for i, sc in enumerate(truth["scenes"]) if sc["start_frame"] <= middle < sc["end_frame"]), -1)
        true.append(index)
        curated.append(row["scene_id"])
    return true, curated


def scene_ari(films: list[tuple[list[dict], dict]]) -> float:
    """Adjusted Rand index of the curated scenes against the true ones, over the shots of all films."""
    true_all, curated_all = [], []
    for n, (shots, truth) in enumerate(films):
        true, curated = scene_labels(shots, truth)
        true_all += [f"{n}/{t}" for t in true]   # scene 0 of two films are two scenes
        curated_all += curated
    if not true_all:
        return float("nan")
    return adjusted_rand_index(*(_codes(x) for x in (true_all, curated_all)))


def _codes(labels: list[str]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(label, len(index)) for label in labels]


def score_dataset(dataset: str | Path, tol: int = 1) -> dict | None:
    """Shot F1 and scene ARI of a curated dataset against the truth files beside its `ok` films."""
    manifest = Path(dataset) / "manifest"
    films = pq.read_table(manifest / "films.parquet", columns=["film_id", "uri", "status"]).to_pylist()
    shots = pq.read_table(manifest / "shots.parquet",
                          columns=["film_id", "scene_id", "detected_shot", "start_frame", "end_frame"]).to_pylist()
    by_film: dict[str, list[dict]] = {}
    for row in shots:
        by_film.setdefault(row["film_id"], []).append(row)
    pairs, per_film = [], []
    for film in films:
        if film["status"] != "ok" or not Path(film["uri"]).with_suffix(".truth.json").is_file():
            continue
        truth = load_truth(Path(film["uri"]))
        mine = by_film.get(film["film_id"], [])
        pairs.append((mine, truth))
        _, _, f1 = shot_scores([(mine, truth)], tol)
        per_film.append({"film": Path(film["uri"]).name, "cuts": len(detected_cuts(mine)), "true_cuts": len(hard_cuts(truth)),
                         "shot_f1": f1, "scene_ari": scene_ari([(mine, truth)]),
                         "scenes": len({r["scene_id"] for r in mine if r.get("scene_id")}),
                         "true_scenes": len(truth["scenes"])})
    if not pairs:
        return None
    precision, recall, f1 = shot_scores(pairs, tol)
    return {"films": len(pairs), "tolerance_frames": tol, "shot_precision": precision, "shot_recall": recall,
            "shot_f1": f1, "scene_ari": scene_ari(pairs), "scenes": sum(f["scenes"] for f in per_film),
            "true_scenes": sum(f["true_scenes"] for f in per_film), "per_film": per_film}
