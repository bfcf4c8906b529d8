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

A film awaits one stage at a time; when its result is ready, that stage's transition runs
(`_filmed` -> `_embedded` -> `_captioned`, each may end the film as failed or skipped with
`_fail`). `curate` holds the window loop; `dataprep/summary.py` writes the summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
from ray.util import metrics

from dataprep import cluster, manifest
from dataprep.caption_film import FilmCaptioner, finish, has_captioner, has_gaps, sidecar_only
from dataprep.config import CurateConfig, RayConfig
from dataprep.embed import ClipEmbedder
from dataprep.film import FilmResult, process_film
from dataprep.lock import writes_to
from dataprep.assemble import Captions, build_film, dropped_rows, film_row
from dataprep.scenes import colour_histogram, group_scenes
from dataprep.shards import SceneShardWriter, recover
from dataprep.sources import list_films
from dataprep.summary import CurateSummary, RunInfo, Tally, summarise, versions

log = logging.getLogger(__name__)

@dataclass
class Outcome:
    """What happened to one film in this run (for progress bars and the summary)."""

    uri: str
    status: str  # ok | failed | skipped
    reason: str | None = None
    n_shots: int = 0
    n_scenes: int = 0


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


def film_on_node(uri: str, cfg: CurateConfig, cache_dir: Path) -> FilmResult:
    """The film task: process_film, tagged with the Ray node that ran it (dataset.json `film_nodes`)."""
    result = process_film(uri, cfg, cache_dir)
    result.node = ray.get_runtime_context().get_node_id()
    return result


def _stages(cfg: CurateConfig):
    """Every Ray resource decision of the curation, in one place."""
    r = cfg.ray
    film_task = ray.remote(film_on_node).options(num_cpus=r.film_cpus, max_retries=r.task_retries)
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
    """A film between submission and the writer: what it awaits, then its outcome."""

    uri: str
    ref: ray.ObjectRef | None = None  # the stage result awaited
    stage: str = "film"  # the name of that stage (for error messages)
    then: Callable | None = None  # the transition to run on the awaited value: (run, film, value) -> None
    pool: tuple[_Pool, int] | None = None  # the actor computing it, if any
    result: FilmResult | None = None
    scenes: list[list[int]] | None = None
    embeddings: np.ndarray | None = None
    entry: object | None = None  # FilmEntry or None
    outcome: Outcome | None = None  # set once the film is done

    def wait(self, stage: str, ref: ray.ObjectRef, then: Callable, pool: tuple[_Pool, int] | None = None) -> None:
        self.stage, self.ref, self.then, self.pool = stage, ref, then, pool

    @property
    def done(self) -> bool:
        return self.outcome is not None


def similarity_method(choice: str, embed_info: dict) -> str:
    """`auto` = CLIP cosine only when the embedder loaded pretrained weights (random CLIP says nothing)."""
    if choice != "auto":
        return choice
    return "histogram" if embed_info.get("random_init", True) else "clip"


def _previous_embed_info(out_dir: Path) -> dict:
    path = out_dir / "dataset.json"
    return json.loads(path.read_text()).get("embed", {}) if path.exists() else {}


@dataclass
class _Run:
    """What the stage transitions of one run share: its config, actor pools and tallies."""

    cfg: CurateConfig
    embedders: _Pool
    captioners: _Pool
    method: str  # scene similarity: clip | histogram
    versions: dict
    tally: Tally
    seen_ids: dict[str, str]  # film_id -> uri of the films curated (duplicates are skipped)
    pending: tuple[list, list] = field(default_factory=lambda: ([], []))  # film / shot rows without a shard


# -- the stage transitions: each takes the value its stage returned and moves the film on ----------
def _filmed(run: _Run, film: _Film, result: FilmResult) -> None:
    """film task -> embed the kept shots' keyframes (or fail / skip the film)."""
    film.result = result
    run.tally.film_nodes[film.uri] = result.node
    if not result.ok:
        return _fail(run, film, "failed", result.error)
    if result.film_id in run.seen_ids:
        return _fail(run, film, "skipped", f"duplicate of {run.seen_ids[result.film_id]}")
    run.seen_ids[result.film_id] = film.uri
    if not result.clips:
        return _fail(run, film, "skipped", "no usable shots (all dropped by filters)", shots_dropped=True)
    ref, i = run.embedders.call("embed", [c.keyframes for c in result.clips])
    film.wait("embed", ref, _embedded, (run.embedders, i))


def _embedded(run: _Run, film: _Film, embeddings: np.ndarray) -> None:
    """embed -> group the shots into scenes -> caption the gaps (or take the sidecar captions as they are)."""
    film.embeddings, result = embeddings, film.result
    kept = result.kept
    features = (
        embeddings if run.method == "clip" else np.stack([colour_histogram(c.keyframes) for c in result.clips])
    )
    starts = [s.start_frame / result.fps for s in kept]
    ends = [s.end_frame / result.fps for s in kept]
    film.scenes = group_scenes(starts, ends, features, run.method, run.cfg.scenes)
    from_sidecar = sidecar_only(result, film.scenes)
    if has_gaps(from_sidecar[0], from_sidecar[2]) and has_captioner(run.cfg.caption):
        ref, i = run.captioners.call("caption", result, film.scenes)
        return film.wait("caption", ref, _captioned, (run.captioners, i))
    _captioned(run, film, (finish(*from_sidecar, film.scenes), 0))


def _captioned(run: _Run, film: _Film, value: tuple[Captions, int]) -> None:
    """captions -> the film's scene samples and rows: ok (or skipped when no scene is long enough)."""
    captions, vlm_failed = value
    run.tally.vlm_failures += vlm_failed
    run.tally.caption_sources.update(captions.sources)
    min_shots = run.cfg.scenes.min_shots
    entry = build_film(film.result, film.embeddings, film.scenes, captions, min_shots, run.versions)
    if not entry.samples:
        return _fail(run, film, "skipped", f"no scene with at least {min_shots} shots", shots_dropped=True)
    film.entry = entry
    run.tally.caption_scenes.update(s for s, scene in zip(captions.scene_status, film.scenes) if len(scene) >= min_shots)
    film.outcome = Outcome(film.uri, "ok", None, entry.film_row["n_shots"], entry.film_row["n_scenes"])


def _fail(run: _Run, film: _Film, status: str, reason: str, shots_dropped: bool = False) -> None:
    """The film ends `failed` or `skipped`: its row (and its shots' drop reasons) wait to be committed."""
    film.entry = None
    film.outcome = Outcome(film.uri, status, reason)
    res = film.result or FilmResult(uri=film.uri)
    run.pending[0].append(film_row(res, status, reason))
    if shots_dropped:  # keep the drop reason of each of its shots
        run.pending[1].extend(dropped_rows(res))


def _advance(run: _Run, film: _Film) -> None:
    """The film's awaited ref is ready: run its transition on the value."""
    if film.pool is not None:
        film.pool[0].release(film.pool[1])
        film.pool = None
    try:
        value = ray.get(film.ref)
    except Exception as e:  # a crash inside a stage (not bad input): recorded, counted, logged
        log.error("film %s crashed in stage %s:\n%s", film.uri, film.stage, traceback.format_exc())
        return _fail(run, film, "failed", f"internal error in {film.stage}: {type(e).__name__}: {e}")
    film.then(run, film, value)


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
    recovered = recover(out_dir)
    for note in recovered:
        log.warning(note)
    done = manifest.ok_films(out_dir)
    todo = [u for u in uris if u not in done]

    # 1. Ray, the stages and their actor pools
    dashboard = connect(cfg.ray)
    if on_status:
        for note in recovered:
            on_status(f"warning: {note}")
        on_status(f"{len(todo)} films to curate, {len(uris) - len(todo)} already done; Ray dashboard: {dashboard or 'n/a'}")
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
    vlm = cfg.caption.vlm
    api_key = os.environ.get(vlm.api_key_env) if vlm and vlm.api_key_env else None  # to the actors, never logged
    captioners = _Pool(lambda: caption_actor.remote(cfg.caption, api_key), cfg.ray.caption_actors)
    run = _Run(
        cfg, embedders, captioners, similarity_method(cfg.scenes.similarity, embed_info), versions(),
        Tally(counts=Counter(skipped=len(uris) - len(todo))), seen_ids={fid: uri for uri, fid in done.items()},
    )

    # 2. the window: at most `window` films in flight, advanced as their stages finish, written in input order
    cache_dir = out_dir / ".cache" / "remote"
    writer = SceneShardWriter(out_dir, cfg.shards)
    stats = _Metrics()
    window = cfg.ray.max_in_flight or min(8 * max(1, int(cpus)), 1024)
    queue: deque[str] = deque(todo)
    flight: deque[_Film] = deque()  # in input order
    n_finished = 0
    while queue or flight:
        while queue and len(flight) < window:
            film = _Film(queue.popleft())
            film.wait("film", film_task.remote(film.uri, cfg, cache_dir), _filmed)
            flight.append(film)
        waiting = [f.ref for f in flight if not f.done]
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1)
            _advance(run, next(f for f in flight if not f.done and f.ref == ready[0]))
        while flight and flight[0].done:  # write in input order
            film = flight.popleft()
            outcome = film.outcome
            run.tally.counts[outcome.status] += 1
            if outcome.status == "failed":
                run.tally.failures.append((film.uri, outcome.reason))
            if film.entry is not None:
                writer.add(film.entry)
            stats.film(outcome, film.result)
            n_finished += 1
            if on_film:
                on_film(outcome, n_finished, len(todo))
        if run.pending[0] and (not flight or len(run.pending[0]) >= 64):
            writer.record_without_shard(*run.pending)
            run.pending[0].clear()
            run.pending[1].clear()
    writer.flush()
    writer.record_without_shard(*run.pending)

    # 3. the summary and the failure policy
    summary = summarise(out_dir, cfg, run.tally, RunInfo(embed_info, run.method, run.versions), started)
    if summary.captions["failure_rate"] > cfg.max_caption_failure_rate:
        raise CurateFailed(
            f"{summary.captions['failed']} of {summary.captions['scenes']} scenes have shots their captioner failed to "
            f"caption ({summary.captions['failure_rate']:.0%}), more than max_caption_failure_rate="
            f"{cfg.max_caption_failure_rate:.0%} (VLM failures: {run.tally.vlm_failures} scenes; see the log). They were "
            f"written with empty captions (caption_source none) to {out_dir}; fix the captioner and re-curate into a new --out"
        )
    if summary.totals["films"]["ok"] == 0:
        raise CurateFailed(f"no film was curated successfully ({summary.totals['films']}); see {out_dir}/dataset.json")
    if summary.failure_rate > cfg.max_failure_rate:
        counts = summary.counts
        raise CurateFailed(
            f"{counts['failed']} of {counts['ok'] + counts['failed']} films failed ({summary.failure_rate:.0%}), "
            f"more than max_failure_rate={cfg.max_failure_rate:.0%}; the others were written to {out_dir}"
        )
    return summary
