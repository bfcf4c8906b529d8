"""Training scenes from the WebDataset shards of `lct curate`: deterministic, resumable, counted.

    stream = SceneStream(dataset_dir, rank, world, seed, holdout=2)     # raw samples, endless
    loader = SceneLoader(stream, data, recipe, window_shots, seed, text, codec)   # model-ready scenes
                                                                        # (cache=EncodingCache: data.cache)
    scene = loader.next()                                               # TrainScene, in stream order
    loader.position                                                     # {"epoch", "index"}: resume point

1. Order. Epoch e shuffles the shard list with (seed, e); a rank reads every world-th shard
   (or, with fewer shards than ranks, every world-th sample) through a shuffle buffer seeded
   with (seed, e, rank). The stream is endless: epoch e + 1 follows epoch e.
2. Resume. `position` counts samples handed out in the current epoch; a stream started at a
   position regenerates that epoch and skips the samples already used (tar reads, no decode).
3. Augmentation is a pure function of (seed, epoch, scene key): the window of <= window_shots
   shots, the single-shot sample, the continuation sample, each shot's time window, and the shot
   replaced by one of its frames. Nothing depends on global RNG. With `data.cache`
   (training/cache.py) each shot's time window and image frame are a function of (seed, scene
   key, shot) alone, the same every epoch, so its latents are encoded once and read back after;
   which shots, and whether a shot is an image, still change per epoch. A continuation sample
   (share `recipe.continuation_prob`) is 2..window_shots consecutive, non-overlapping segments of
   one shot, each `data.frames` long, every one with the shot's caption as written (no
   "[SHOT CUT]"): the layout `lct generate --mode extend` continues a shot in. (Prompt dropout
   for classifier-free guidance is decided per step in the loop, identically on every rank: see
   training/objective.py.)
4. Bad samples (unreadable tar members, missing json or shot mp4, undecodable video) are
   skipped and counted in `loader.skipped`; they never stop the run.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dataprep.dataset import CorruptSample, DatasetError, SceneSample, heldout_keys, raw_samples, shard_paths
from dataprep.media import ClipError, cover_crop, read_frames, window_indices
from model import Scene, Shot, TextEncoder, encode_prompts, scene_prompts
from model.latents import LatentCodec

from .cache import EncodingCache
from .config import DataSection, RecipeSection

log = logging.getLogger(__name__)


# -- 1 + 2: the deterministic, resumable raw sample stream ------------------------------------
class SceneStream:
    """Endless raw scene samples for one rank; see the module docstring for the order."""

    def __init__(
        self, dataset: str | Path, rank: int = 0, world: int = 1, seed: int = 0,
        shuffle_buffer: int = 64, holdout: int = 0,
    ):
        self.shards = [str(p) for p in shard_paths(dataset)]
        self.rank, self.world, self.seed, self.buffer = rank, world, seed, shuffle_buffer
        self.exclude = set(heldout_keys(dataset, holdout))
        self.errors = 0                                     # tar-level problems skipped

    def _on_error(self, err: Exception) -> bool:
        self.errors += 1
        log.warning("skipping unreadable shard data: %r", err)
        return True

    def epoch(self, e: int) -> Iterator[dict]:
        order = list(self.shards)
        random.Random(f"{self.seed}-{e}").shuffle(order)
        by_shard = len(order) >= self.world
        mine = order[self.rank :: self.world] if by_shard else order
        rng = random.Random(f"{self.seed}-{e}-{self.rank}")
        buf: list[dict] = []
        n = 0
        for url in mine:
            for sample in raw_samples([url], self._on_error):
                if sample.get("__key__") in self.exclude:
                    continue
                n += 1
                if not by_shard and (n - 1) % self.world != self.rank:
                    continue
                sample["__epoch__"] = e
                buf.append(sample)
                if len(buf) >= self.buffer:
                    yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))

    def from_position(self, epoch: int = 0, index: int = 0) -> Iterator[tuple[int, int, dict]]:
        """(epoch, index in epoch, sample) from a resume point on, forever."""
        while True:
            produced = 0
            for i, sample in enumerate(self.epoch(epoch)):
                produced += 1
                if i >= index:
                    yield epoch, i, sample
            if produced == 0:
                raise DatasetError(
                    f"rank {self.rank} got no training scenes from {len(self.shards)} shards "
                    f"({len(self.exclude)} held out); curate more films or lower data.holdout"
                )
            epoch, index = epoch + 1, 0


# -- 3: augmentation (pure functions of the sample and its rng) ------------------------------
@dataclass
class Prepared:
    """A scene after windowing and decoding, before encoding."""

    key: str
    global_caption: str
    captions: list[str]
    videos: list[np.ndarray]          # per shot (F, H, W, 3) uint8; F = 1 for an image shot
    clips: list[dict]                 # per shot: what was taken (the latent cache's key within the scene)
    continuation: bool = False        # the shots are consecutive segments of one shot (no "[SHOT CUT]")


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def prepare(sample: dict, data: DataSection, recipe: RecipeSection, window_shots: int, seed: int) -> Prepared:
    """Pick the shots and frames of one training scene from a raw sample (deterministic; see 3. above)."""
    scene = SceneSample.parse(sample)
    key, shots = scene.key, scene.shots
    if not shots:
        raise CorruptSample(f"sample {key!r} has no shots in its json")
    rng = sample_rng(seed, sample.get("__epoch__", 0), key)
    if recipe.continuation_prob and window_shots > 1 and rng.random() < recipe.continuation_prob:
        segments = continuation(scene, data, window_shots, rng, seed)
        if segments is not None:
            return segments
    n = len(shots)
    if n > 1 and rng.random() < recipe.single_shot_prob:
        picks = [int(rng.integers(n))]
    else:
        first = int(rng.integers(0, n - window_shots + 1)) if n > window_shots else 0
        picks = list(range(first, min(n, first + window_shots)))
    videos, captions, clips = [], [], []
    for i in picks:
        try:
            frames, src_fps = read_frames(scene.mp4(i))
        except ClipError as err:
            raise CorruptSample(f"sample {key!r} shot {i}: {err}") from err
        clip_rng = sample_rng(seed, 0, f"{key}/{i}") if data.cache else rng    # cached: the same every epoch
        span = len(frames) / src_fps - data.frames / data.fps   # seconds the window can move
        start = float(clip_rng.uniform(0.0, span)) if span > 0 else 0.0
        idx = window_indices(len(frames), src_fps, data.frames, data.fps, start)
        if rng.random() < recipe.image_prob:
            idx = [idx[int(clip_rng.integers(len(idx)))]]         # an image shot (F = 1)
        videos.append(np.stack([cover_crop(frames[j], tuple(data.size)) for j in idx]))
        captions.append(shots[i].get("caption") or "")
        clips.append(taken(i, idx, len(frames), src_fps, data))
    return Prepared(key, scene.global_caption, captions, videos, clips)


def taken(shot: int, idx: list[int], of: int, src_fps: float, data: DataSection) -> dict:
    """What a clip took from its shot: the latent cache's key within the scene (training/cache.py)."""
    return {"shot": shot, "frames": [int(j) for j in idx], "of": of, "fps": float(src_fps), "size": list(data.size)}


def continuation(scene: SceneSample, data: DataSection, window_shots: int, rng: np.random.Generator,
                 seed: int = 0) -> Prepared | None:
    """Consecutive segments of one shot of the scene (None when no shot holds two segments).

    With data.cache the segments' start is a function of (seed, scene key, shot) alone, like a
    cached shot's time window, so its latents are read back on later epochs."""
    seg_s = data.frames / data.fps
    long_enough = []
    for i in range(len(scene.shots)):
        try:
            frames, src_fps = read_frames(scene.mp4(i))
        except ClipError as err:
            raise CorruptSample(f"sample {scene.key!r} shot {i}: {err}") from err
        if len(frames) / src_fps >= 2 * seg_s:
            long_enough.append((i, frames, src_fps))
    if not long_enough:
        return None
    i, frames, src_fps = long_enough[int(rng.integers(len(long_enough)))]
    duration = len(frames) / src_fps
    k = min(window_shots, int(duration // seg_s))
    start_rng = sample_rng(seed, 0, f"{scene.key}/{i}/continuation") if data.cache else rng
    start = float(start_rng.uniform(0.0, duration - k * seg_s))
    videos, clips = [], []
    for s in range(k):
        idx = window_indices(len(frames), src_fps, data.frames, data.fps, start + s * seg_s)
        videos.append(np.stack([cover_crop(frames[j], tuple(data.size)) for j in idx]))
        clips.append(taken(i, idx, len(frames), src_fps, data))
    caption = scene.shots[i].get("caption") or ""
    return Prepared(scene.key, scene.global_caption, [caption] * k, videos, clips, continuation=True)


# -- encoding and the loader ------------------------------------------------------------------
@dataclass
class TrainScene:
    key: str
    scene: Scene                      # text features + clean latents z0 (C, F, H, W) per shot


def encode(prepared: Prepared, text: TextEncoder, codec: LatentCodec, cache: EncodingCache | None = None) -> TrainScene:
    """Latents (from the cache when given: encoded on a miss only) and prompt features of a scene."""
    def one(video: np.ndarray, clip: dict) -> torch.Tensor:             # (C, F', H', W')
        run = lambda: codec.encode(torch.from_numpy(video))            # noqa: E731
        return run() if cache is None else cache.latent(prepared.key, clip, run)

    latents = [one(v, c) for v, c in zip(prepared.videos, prepared.clips)]
    prompts = ([prepared.global_caption] + [c.strip() for c in prepared.captions] if prepared.continuation
               else scene_prompts(prepared.global_caption, prepared.captions))   # segments: as written
    rows = [r.cpu() for r in encode_prompts(text, prompts)]
    return TrainScene(prepared.key, Scene(global_text=rows[0], shots=[Shot(r, z) for r, z in zip(rows[1:], latents)]))


class SceneLoader:
    """Model-ready scenes from a SceneStream, decoded by a background thread, in stream order."""

    def __init__(
        self, stream: SceneStream, data: DataSection, recipe: RecipeSection, window_shots: int, seed: int,
        text: TextEncoder, codec: LatentCodec, epoch: int = 0, index: int = 0, cache: EncodingCache | None = None,
    ):
        self.stream, self.data, self.recipe, self.window_shots, self.seed = stream, data, recipe, window_shots, seed
        self.text, self.codec, self.cache = text, codec, cache
        self.position = {"epoch": epoch, "index": index}      # next sample to hand out
        self.corrupt = 0                                      # corrupt samples skipped
        self.wait_s = 0.0                                     # time the consumer waited for data
        self._queue: queue.Queue = queue.Queue(maxsize=data.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(epoch, index), daemon=True, name="scene-loader")
        self._thread.start()

    def _produce(self, epoch: int, index: int) -> None:
        try:
            for e, i, sample in self.stream.from_position(epoch, index):
                if self._stop.is_set():
                    return
                try:
                    item = encode(prepare(sample, self.data, self.recipe, self.window_shots, self.seed), self.text, self.codec,
                                  self.cache)
                except CorruptSample as err:
                    item = err
                self._put((e, i, item))
        except BaseException as err:                      # surfaced in the consumer, not lost in a thread
            self._put((None, None, err))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self) -> TrainScene:
        started = time.perf_counter()
        try:
            while True:
                e, i, item = self._queue.get()
                if e is None:
                    raise item
                self.position = {"epoch": e, "index": i + 1}
                if isinstance(item, CorruptSample):
                    self.corrupt += 1
                    log.warning("skipping a corrupt training sample: %s", item)
                    continue
                return item
        finally:
            self.wait_s += time.perf_counter() - started

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far: corrupt scenes + unreadable tar data (the `skipped_samples` metric)."""
        return self.corrupt + self.stream.errors

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

