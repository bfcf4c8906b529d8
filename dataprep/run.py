"""The Ray graph of `lct curate`: films -> Ray tasks -> embed / caption actors -> shards.

    film task (probe, shots, filters, clips)   one per film, `ray.film_cpus` each, retried on worker death
      -> EmbedWorker actors (open_clip, loaded once)
      -> scene grouping (driver: cheap, pure)
      -> CaptionWorker actors (VLM client / CoCa, created only when a film needs them)
      -> SceneShardWriter (driver), films written in input order

At most `max_in_flight` films are between submission and the writer, so driver memory
stays flat however many films there are. Films already `ok` in `DIR` are skipped, so a
re-run resumes; a killed run leaves no half-written shard (see `dataprep/shards.py`).
Resources of every stage are set here, in `_stages`, and nowhere else.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import yaml
from ray.util import metrics

from dataprep import cluster, manifest
from dataprep.caption_film import SCENE_FAILED, FilmCaptioner, finish, has_captioner, has_gaps, sidecar_only
from dataprep.config import CurateConfig, RayConfig
from dataprep.embed import ClipEmbedder
from dataprep.film import FilmResult, process_film
from dataprep.lock import writes_to
from dataprep.samples import build_film, dropped_rows, film_row
from dataprep.scenes import colour_histogram, group_scenes
from dataprep.shards import SceneShardWriter, recover
from dataprep.sources import list_films

log = logging.getLogger(__name__)

VERSION_PACKAGES = ("lct", "torch", "open_clip_torch", "scenedetect-headless", "av", "ray", "webdataset")


def versions() -> dict:
    return {name: version(name) for name in VERSION_PACKAGES} | {"python": platform.python_version()}


@dataclass
class Outcome:
    """What happened to one film in this run (for progress bars and the summary)."""

    uri: str
    status: str  # ok | failed | skipped
    reason: str | None = None
    n_shots: int = 0
    n_scenes: int = 0


@dataclass
class CurateSummary:
    out_dir: Path
    counts: dict = field(default_factory=dict)  # this run: ok / failed / skipped
    totals: dict = field(default_factory=dict)  # whole dataset
    failures: list[tuple[str, str]] = field(default_factory=list)
    failure_rate: float = 0.0
    wall_s: float = 0.0
    captions: dict = field(default_factory=dict)  # this run's scenes by caption status, and the policy


class CurateUsageError(ValueError):
    """The request cannot run as given (e.g. more CPUs per film than the cluster has); nothing was curated."""


class CurateFailed(RuntimeError):
    """The run finished but failed its failure-rate policy; the outputs written are valid."""


class EmbedWorker:
    """Ray actor: open_clip loaded once; embeds the keyframes of a batch of shots per call."""

    def __init__(self, cfg):
        self.embedder = ClipEmbedder(cfg)

    def describe(self) -> dict:
        return self.embedder.description

    def embed(self, keyframes: list[np.ndarray]) -> np.ndarray:
        return self.embedder(keyframes)  # (N, D) float32, unit norm


class CaptionWorker:
    """Ray actor around FilmCaptioner (VLM client and/or CoCa, loaded once)."""

    def __init__(self, cfg, api_key: str | None):
        self.captioner = FilmCaptioner(cfg, api_key)

    def caption(self, result: FilmResult, scenes: list[list[int]]):
        return self.captioner(result, scenes)


def connect(cfg: RayConfig) -> str | None:
    """Join `cfg.address` (or RAY_ADDRESS), or start a local Ray with its dashboard; returns its URL."""
    return cluster.connect(cfg.address, cfg.num_cpus, cfg.dashboard_host)


def _stages(cfg: CurateConfig):
    """Every Ray resource decision of the curation, in one place."""
    r = cfg.ray
    film_task = ray.remote(process_film).options(num_cpus=r.film_cpus, max_retries=r.task_retries)
    embed_actor = ray.remote(EmbedWorker).options(
        num_cpus=r.embed_cpus, num_gpus=r.embed_gpus, max_restarts=2, max_task_retries=2
    )
    caption_actor = ray.remote(CaptionWorker).options(
        num_cpus=r.caption_cpus, num_gpus=r.caption_gpus, max_restarts=2, max_task_retries=2
    )
    return film_task, embed_actor, caption_actor


class _Metrics:
    """Custom Ray metrics (dashboard / Prometheus): films by status, shots, decode speed."""

    def __init__(self):
        self.films = metrics.Counter("lct_curate_films", "Films curated, by status.", tag_keys=("status",))
        self.shots = metrics.Counter("lct_curate_shots", "Shots written into scenes.")
        self.fps = metrics.Gauge("lct_curate_frames_decoded_per_s", "Frames decoded per second by film tasks.")
        self.frames, self.seconds = 0, 0.0

    def film(self, outcome: Outcome, result: FilmResult | None) -> None:
        self.films.inc(1, tags={"status": outcome.status})
        if outcome.n_shots:
            self.shots.inc(outcome.n_shots)
        if result is not None and result.seconds > 0:
            self.frames += result.n_frames
            self.seconds += result.seconds
            self.fps.set(self.frames / self.seconds)


class _Pool:
    """Actors of one stage; each call goes to the actor with the fewest calls outstanding."""

    def __init__(self, make: Callable[[], object], size: int):
        self.make, self.size = make, size
        self.actors: list = []
        self.busy: list[int] = []

    def call(self, method: str, *args) -> tuple[ray.ObjectRef, int]:
        if not self.actors:  # created on first use
            self.actors = [self.make() for _ in range(self.size)]
            self.busy = [0] * self.size
        i = self.busy.index(min(self.busy))
        self.busy[i] += 1
        return getattr(self.actors[i], method).remote(*args), i

    def release(self, i: int) -> None:
        self.busy[i] -= 1


@dataclass
class _Film:
    """A film between submission and the writer."""

    uri: str
    ref: ray.ObjectRef | None = None  # the stage currently awaited
    pool: tuple[_Pool, int] | None = None  # the actor computing it, if any
    stage: str = "film"  # film | embed | caption | done
    result: FilmResult | None = None
    scenes: list[list[int]] | None = None
    embeddings: np.ndarray | None = None
    entry: object | None = None  # FilmEntry or None
    outcome: Outcome | None = None


def similarity_method(choice: str, embed_info: dict) -> str:
    """`auto` = CLIP cosine only when the embedder loaded pretrained weights (random CLIP says nothing)."""
    if choice != "auto":
        return choice
    return "histogram" if embed_info.get("random_init", True) else "clip"


def _previous_embed_info(out_dir: Path) -> dict:
    path = out_dir / "dataset.json"
    return json.loads(path.read_text()).get("embed", {}) if path.exists() else {}


@writes_to("out_dir", "lct curate")  # one writer per DIR (DIR/lct.lock): a second one gets OutputBusy
def curate(
    inputs: list[str],
    out_dir: str | Path,
    cfg: CurateConfig,
    on_film: Callable[[Outcome, int, int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> CurateSummary:
    """Curate `inputs` into `out_dir`. Raises CurateFailed past `cfg.max_failure_rate` or
    `cfg.max_caption_failure_rate` (outputs stay valid)."""
    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    uris = list_films(inputs, cfg.extensions)
    out_dir.mkdir(parents=True, exist_ok=True)
    recover(out_dir)
    done = manifest.ok_films(out_dir)
    todo = [u for u in uris if u not in done]
    skipped_done = len(uris) - len(todo)

    dashboard = connect(cfg.ray)
    if on_status:
        on_status(f"{len(todo)} films to curate, {skipped_done} already done; Ray dashboard: {dashboard or 'n/a'}")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cfg.ray.film_cpus > cpus:
        raise CurateUsageError(f"ray.film_cpus={cfg.ray.film_cpus} but the Ray cluster has only {cpus} CPUs")
    film_task, embed_actor, caption_actor = _stages(cfg)
    embedders = _Pool(lambda: embed_actor.remote(cfg.embed), cfg.ray.embed_actors)
    embed_info = _previous_embed_info(out_dir)
    if todo:  # a run with nothing to do loads no model
        ref, i = embedders.call("describe")
        embed_info = ray.get(ref)
        embedders.release(i)
    method = similarity_method(cfg.scenes.similarity, embed_info)
    vlm = cfg.caption.vlm
    api_key = os.environ.get(vlm.api_key_env) if vlm and vlm.api_key_env else None  # to the actors, never logged
    captioners = _Pool(lambda: caption_actor.remote(cfg.caption, api_key), cfg.ray.caption_actors)
    cache_dir = out_dir / ".cache" / "remote"
    writer = SceneShardWriter(out_dir, cfg.shards)
    stats = _Metrics()
    window = cfg.ray.max_in_flight or min(8 * max(1, int(cpus)), 1024)
    versions_ = versions()

    counts = Counter(skipped=skipped_done)
    failures: list[tuple[str, str]] = []
    caption_sources: Counter = Counter()
    caption_scenes: Counter = Counter()  # scenes written this run by caption status (caption_film)
    vlm_failures = 0
    seen_ids: dict[str, str] = dict((fid, uri) for uri, fid in done.items())
    queue: deque[str] = deque(todo)
    flight: deque[_Film] = deque()  # in input order
    n_finished = 0
    pending_rows: tuple[list, list] = ([], [])

    def record(film: _Film, outcome: Outcome) -> None:
        film.outcome, film.stage = outcome, "done"

    def fail(film: _Film, status: str, reason: str, shots_dropped: bool = False) -> None:
        film.entry = None
        record(film, Outcome(film.uri, status, reason))
        res = film.result or FilmResult(uri=film.uri)
        pending_rows[0].append(film_row(res, status, reason))
        if shots_dropped:  # keep the drop reason of each of its shots
            pending_rows[1].extend(dropped_rows(res))

    def advance(film: _Film) -> None:
        """Move a film whose awaited ref is ready to its next stage."""
        nonlocal vlm_failures
        if film.pool is not None:
            film.pool[0].release(film.pool[1])
            film.pool = None
        try:
            value = ray.get(film.ref)
        except Exception as e:  # a crash inside a stage (not bad input): recorded, counted, logged
            log.error("film %s crashed in stage %s:\n%s", film.uri, film.stage, traceback.format_exc())
            fail(film, "failed", f"internal error in {film.stage}: {type(e).__name__}: {e}")
            return
        if film.stage == "film":
            film.result = result = value
            if not result.ok:
                return fail(film, "failed", result.error)
            if result.film_id in seen_ids:
                return fail(film, "skipped", f"duplicate of {seen_ids[result.film_id]}")
            seen_ids[result.film_id] = film.uri
            if not result.clips:
                return fail(film, "skipped", "no usable shots (all dropped by filters)", shots_dropped=True)
            film.stage = "embed"
            film.ref, i = embedders.call("embed", [c.keyframes for c in result.clips])
            film.pool = (embedders, i)
            return
        if film.stage == "embed":
            film.embeddings, result = value, film.result
            kept = result.kept
            features = (
                value if method == "clip" else np.stack([colour_histogram(c.keyframes) for c in result.clips])
            )
            starts = [s.start_frame / result.fps for s in kept]
            ends = [s.end_frame / result.fps for s in kept]
            film.scenes = group_scenes(starts, ends, features, method, cfg.scenes)
            from_sidecar = sidecar_only(result, film.scenes)
            if has_gaps(from_sidecar[0], from_sidecar[2]) and has_captioner(cfg.caption):
                film.stage = "caption"
                film.ref, i = captioners.call("caption", result, film.scenes)
                film.pool = (captioners, i)
                return
            value = (finish(*from_sidecar, film.scenes), 0)
        captions, vlm_failed = value
        vlm_failures += vlm_failed
        caption_sources.update(captions.sources)
        entry = build_film(film.result, film.embeddings, film.scenes, captions, cfg.scenes.min_shots, versions_)
        if not entry.samples:
            return fail(film, "skipped", f"no scene with at least {cfg.scenes.min_shots} shots", shots_dropped=True)
        film.entry = entry
        caption_scenes.update(s for s, scene in zip(captions.scene_status, film.scenes) if len(scene) >= cfg.scenes.min_shots)
        record(film, Outcome(film.uri, "ok", None, entry.film_row["n_shots"], entry.film_row["n_scenes"]))

    while queue or flight:
        while queue and len(flight) < window:
            uri = queue.popleft()
            flight.append(_Film(uri, film_task.remote(uri, cfg, cache_dir)))
        waiting = [f.ref for f in flight if f.stage != "done"]
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1)
            for film in flight:
                if film.stage != "done" and film.ref == ready[0]:
                    advance(film)
                    break
        while flight and flight[0].stage == "done":  # write in input order
            film = flight.popleft()
            outcome = film.outcome
            counts[outcome.status] += 1
            if outcome.status == "failed":
                failures.append((film.uri, outcome.reason))
            if film.entry is not None:
                writer.add(film.entry)
            stats.film(outcome, film.result)
            n_finished += 1
            if on_film:
                on_film(outcome, n_finished, len(todo))
        if pending_rows[0] and (not flight or len(pending_rows[0]) >= 64):
            writer.record_without_shard(*pending_rows)
            pending_rows[0].clear()
            pending_rows[1].clear()
    writer.flush()
    writer.record_without_shard(*pending_rows)

    films, shots, shards = manifest.consolidate(out_dir)
    attempted = counts["ok"] + counts["failed"]
    summary = CurateSummary(
        out_dir=out_dir,
        counts=dict(ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"]),
        failures=failures,
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
    written = sum(caption_scenes.values())
    summary.captions = {
        "scenes": written,
        **{status: caption_scenes[status] for status in ("captioned", "failed", "no_captioner")},
        "failure_rate": caption_scenes[SCENE_FAILED] / written if written else 0.0,
        "max_caption_failure_rate": cfg.max_caption_failure_rate,
    }
    _write_summary(out_dir, cfg, summary, shards, embed_info, method, caption_sources, vlm_failures, versions_)
    if summary.captions["failure_rate"] > cfg.max_caption_failure_rate:
        raise CurateFailed(
            f"{summary.captions['failed']} of {written} scenes have shots their captioner failed to caption "
            f"({summary.captions['failure_rate']:.0%}), more than max_caption_failure_rate="
            f"{cfg.max_caption_failure_rate:.0%} (VLM failures: {vlm_failures} scenes; see the log). They were written "
            f"with empty captions (caption_source none) to {out_dir}; fix the captioner and re-curate into a new --out"
        )
    if status["ok"] == 0:
        raise CurateFailed(f"no film was curated successfully ({summary.totals['films']}); see {out_dir}/dataset.json")
    if summary.failure_rate > cfg.max_failure_rate:
        raise CurateFailed(
            f"{counts['failed']} of {attempted} films failed ({summary.failure_rate:.0%}), more than "
            f"max_failure_rate={cfg.max_failure_rate:.0%}; the others were written to {out_dir}"
        )
    return summary


def _write_summary(out_dir, cfg, summary, shards, embed_info, method, caption_sources, vlm_failures, versions_):
    doc = {
        "counts": summary.totals,
        "this_run": summary.counts | {"failure_rate": summary.failure_rate},
        "failures": [{"uri": u, "reason": r} for u, r in summary.failures],
        "shards": shards,
        "embed": embed_info,
        "scene_similarity": method,
        "caption_sources": dict(caption_sources),
        "vlm_failed_scenes": vlm_failures,
        "captions": summary.captions,
        "config": json.loads(cfg.model_dump_json()),
        "versions": versions_,
        "wall_time_s": round(summary.wall_s, 3),
    }
    config_yaml = out_dir / "config.yaml"  # the effective config, reusable with `--config`
    config_yaml.write_text(yaml.safe_dump(doc["config"], sort_keys=False))
    tmp = out_dir / "dataset.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, out_dir / "dataset.json")
