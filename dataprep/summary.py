"""The end of a curation run: the consolidated manifest, `DIR/dataset.json` and `DIR/config.yaml`.

    tally = Tally(skipped=n_already_done)       # the driver counts each film as it is written
    summary = summarise(out_dir, cfg, tally, info, started)   # folds the manifest, writes the summary

`dataset.json` holds the dataset's totals (from the consolidated manifest: every run so far),
this run's counts and failure rate, the shard list (name, samples, bytes, sha256), how scenes
were grouped and captioned, the effective config and the package versions.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import yaml

from dataprep import manifest
from dataprep.caption_film import SCENE_FAILED
from dataprep.config import CurateConfig

VERSION_PACKAGES = ("lct", "torch", "open_clip_torch", "scenedetect-headless", "av", "ray", "webdataset")


def versions() -> dict:
    return {name: version(name) for name in VERSION_PACKAGES} | {"python": platform.python_version()}


@dataclass
class CurateSummary:
    out_dir: Path
    counts: dict = field(default_factory=dict)  # this run: ok / failed / skipped
    totals: dict = field(default_factory=dict)  # whole dataset
    failures: list[tuple[str, str]] = field(default_factory=list)
    failure_rate: float = 0.0
    wall_s: float = 0.0
    captions: dict = field(default_factory=dict)  # this run's scenes by caption status, and the policy


@dataclass
class Tally:
    """What this run did, counted film by film as the driver writes them."""

    counts: Counter = field(default_factory=Counter)  # ok / failed / skipped
    failures: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason) of failed films
    caption_sources: Counter = field(default_factory=Counter)  # sidecar | vlm | coca | none, per shot
    vlm_failures: int = 0  # scenes whose VLM call failed
    caption_scenes: Counter = field(default_factory=Counter)  # scenes written by caption status (caption_film)
    film_nodes: dict[str, str | None] = field(default_factory=dict)  # uri -> Ray node id of its film task


@dataclass
class RunInfo:
    """How this run embedded and grouped, recorded with the summary."""

    embed: dict  # the embedder's description (model, dim, random_init, ...)
    scene_similarity: str  # clip | histogram
    versions: dict


def summarise(out_dir: Path, cfg: CurateConfig, tally: Tally, info: RunInfo, started: float) -> CurateSummary:
    """Fold the manifest parts, count this run and the dataset, write dataset.json + config.yaml."""
    films, shots, shards = manifest.consolidate(out_dir)
    counts = tally.counts
    attempted = counts["ok"] + counts["failed"]
    summary = CurateSummary(
        out_dir=out_dir,
        counts=dict(ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"]),
        failures=tally.failures,
        failure_rate=counts["failed"] / attempted if attempted else 0.0,
        wall_s=time.perf_counter() - started,
    )
    status = Counter(films.column("status").to_pylist())
    kept = shots.filter(shots.column("kept")) if shots.num_rows else shots
    summary.totals = {
        "films": {"ok": status["ok"], "failed": status["failed"], "skipped": status["skipped"]},
        "shots": kept.num_rows,
        "shots_dropped": shots.num_rows - kept.num_rows,
        "scenes": sum(s["samples"] for s in shards),
        "shards": len(shards),
        "scenes_uncaptioned": len({r["scene_id"] for r in kept.select(["scene_id", "caption_source"]).to_pylist()
                                   if r["caption_source"] == "none"}),
    }
    written = sum(tally.caption_scenes.values())
    summary.captions = {
        "scenes": written,
        **{status: tally.caption_scenes[status] for status in ("captioned", "failed", "no_captioner")},
        "failure_rate": tally.caption_scenes[SCENE_FAILED] / written if written else 0.0,
        "max_caption_failure_rate": cfg.max_caption_failure_rate,
    }
    write_summary(out_dir, cfg, summary, shards, tally, info)
    return summary


def write_summary(out_dir: Path, cfg: CurateConfig, summary: CurateSummary, shards: list[dict], tally: Tally,
                  info: RunInfo) -> None:
    doc = {
        "counts": summary.totals,
        "this_run": summary.counts | {"failure_rate": summary.failure_rate},
        "failures": [{"uri": u, "reason": r} for u, r in summary.failures],
        "film_nodes": tally.film_nodes,  # this run: film uri -> the Ray node id that decoded it
        "shards": shards,
        "embed": info.embed,
        "scene_similarity": info.scene_similarity,
        "caption_sources": dict(tally.caption_sources),
        "vlm_failed_scenes": tally.vlm_failures,
        "captions": summary.captions,
        "config": json.loads(cfg.model_dump_json()),
        "versions": info.versions,
        "wall_time_s": round(summary.wall_s, 3),
    }
    config_yaml = out_dir / "config.yaml"  # the effective config, reusable with `--config`
    config_yaml.write_text(yaml.safe_dump(doc["config"], sort_keys=False))
    tmp = out_dir / "dataset.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, out_dir / "dataset.json")
