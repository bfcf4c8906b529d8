"""The curated dataset directory (DESIGN.md "Curated dataset directory"): its one owner.

    DIR/dataset.json                    the summary of the last run (dataprep/run.py writes it)
    DIR/shards/scenes-NNNNNN.tar        one WebDataset sample per scene (committed by dataprep/shards.py)
    DIR/manifest/{films,shots}.parquet  the manifest (dataprep/manifest.py)

Everything that writes a scene sample or reads one goes through this module:

    sample = encode_sample(key, meta_json, mp4s, npy_bytes(clip))   # the one writer of a sample
    for scene in read_scenes(DIR):                                  # the one reader: SceneSample
        scene.key, scene.global_caption, scene.captions, scene.mp4(i)
    shard_paths(DIR)        the shards, with teaching errors for the wrong kind of directory
    check_layout(DIR)       the first sample has the scene layout (before a training run starts)
    heldout_keys(DIR, n)    the held-out rule shared by the trainer (`data.holdout`) and `lct eval`
    check_dataset(DIR)      shards <-> dataset.json <-> manifest agree (the ingest flow's verification)

A sample: `__key__` = scene_id = `{film_id}-{scene_index:05d}`; `json` = the scene's metadata
(film_id, uri, scene_index, fps, global_caption, shots[{shot_index, start_frame, end_frame,
start_s, end_s, caption, caption_source}], versions); `{i:03d}.mp4` per shot i; `clip.npy`
(n_shots, D) float16. No pickle: json, npy, mp4 only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

SUMMARY = "dataset.json"
SHARDS = "shards"


class DatasetError(ValueError):
    """The dataset dir cannot be read (missing, empty, or not written by `lct curate`)."""


class CorruptSample(ValueError):
    """One scene sample is unusable (a reader skips and counts it, or reports it)."""


# -- the sample: one writer, one typed view ----------------------------------------------------
def encode_sample(key: str, meta: bytes, mp4s: list[bytes], clip_npy: bytes) -> dict:
    """A scene sample exactly as DESIGN.md lays it out."""
    sample = {"__key__": key, "json": meta, "clip.npy": clip_npy}
    for i, mp4 in enumerate(mp4s):
        sample[f"{i:03d}.mp4"] = mp4
    return sample


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class SceneSample:
    """One scene sample read back: its key, its parsed json, and its raw members (extension -> bytes)."""

    key: str
    meta: dict
    members: dict

    @classmethod
    def parse(cls, raw: dict) -> "SceneSample":
        """A raw WebDataset sample -> SceneSample; CorruptSample when its json is missing or unreadable."""
        try:
            meta = json.loads(raw["json"])
        except (KeyError, ValueError) as err:
            raise CorruptSample(f"sample {raw.get('__key__')!r} has no readable json: {err!r}") from err
        return cls(raw.get("__key__", "?"), meta, raw)

    @property
    def shots(self) -> list[dict]:
        return self.meta.get("shots") or []

    @property
    def global_caption(self) -> str:
        return self.meta.get("global_caption") or ""

    @property
    def captions(self) -> list[str]:
        return [s.get("caption") or "" for s in self.shots]

    def mp4(self, i: int) -> bytes:
        """Shot i's clip; CorruptSample when the sample lacks it."""
        mp4 = self.members.get(f"{i:03d}.mp4")
        if mp4 is None:
            raise CorruptSample(f"sample {self.key!r} lacks {i:03d}.mp4 for shot {i} of {len(self.shots)}")
        return mp4

    @property
    def mp4s(self) -> list[bytes]:
        return [self.mp4(i) for i in range(len(self.shots))]


# -- reading the shards ------------------------------------------------------------------------
def list_shards(dataset: str | Path) -> list[Path]:
    """The shard files of a dataset dir, in order (empty when there are none)."""
    return sorted((Path(dataset) / SHARDS).glob("*.tar"))


def shard_paths(dataset: str | Path) -> list[Path]:
    """The shards of a curated dataset, with teaching errors for the wrong kind of directory."""
    root = Path(dataset)
    if not root.is_dir():
        raise DatasetError(f"dataset dir {root} does not exist; point --data at the --out of `lct curate`")
    shards = list_shards(root)
    if not shards:
        found = sorted(p.name for p in root.iterdir())[:8]
        raise DatasetError(
            f"{root} has no shards/*.tar (it holds {found or 'nothing'}); "
            "expected the output dir of `lct curate` (shards/, manifest/, dataset.json)"
        )
    return shards


def raw_samples(shards: Iterable[str | Path], handler: Callable = wds.reraise_exception) -> Iterator[dict]:
    """The raw samples (`__key__` + extension -> bytes) of these shards in order; tar-level errors go to
    `handler` (webdataset's policy: reraise_exception, warn_and_continue, or a counting callback)."""
    from webdataset import tariterators as tar

    stream = tar.url_opener([{"url": str(url)} for url in shards], handler=handler)
    return tar.group_by_keys(tar.tar_file_expander(stream, handler=handler), handler=handler)


def read_scenes(dataset: str | Path, handler: Callable = wds.reraise_exception) -> Iterator[SceneSample]:
    """Every scene sample of a curated dataset, in shard order."""
    for raw in raw_samples(shard_paths(dataset), handler):
        yield SceneSample.parse(raw)


def load_scenes(dataset: str | Path, keys: list[str]) -> list[SceneSample]:
    """The samples with these keys, in the order of `keys`."""
    wanted, found = set(keys), {}
    for raw in raw_samples(shard_paths(dataset)):
        if raw["__key__"] in wanted:
            found[raw["__key__"]] = SceneSample.parse(raw)
    missing = [k for k in keys if k not in found]
    if missing:
        raise FileNotFoundError(f"scenes {missing} are not in the shards of {dataset}")
    return [found[k] for k in keys]


def check_layout(dataset: str | Path) -> dict:
    """Read the first sample and check it has the scene layout; returns its json. Raises DatasetError."""
    for path in shard_paths(dataset):
        for raw in raw_samples([path]):
            meta = SceneSample.parse(raw).meta
            missing = [f"{i:03d}.mp4" for i in range(len(meta.get("shots", []))) if f"{i:03d}.mp4" not in raw]
            if "shots" not in meta or "global_caption" not in meta or missing or not meta["shots"]:
                raise DatasetError(
                    f"{path} sample {raw.get('__key__')!r} is not an LCT scene sample: it needs json with "
                    f"global_caption and shots[], and one NNN.mp4 per shot (missing {missing[:3]}, "
                    f"json keys {sorted(meta)[:8]}); was it written by `lct curate`?"
                )
            return meta
    raise DatasetError(f"the shards of {dataset} hold no samples")


# -- the rules ---------------------------------------------------------------------------------
def heldout_keys(dataset: str | Path, n: int) -> list[str]:
    """The n scenes held out from training for evaluation: the n smallest sha1(scene_id), sorted.

    Deterministic, independent of shard order, and spread over films. Read from the manifest.
    n held out are a subset of n + 1 held out.
    """
    if n <= 0:
        return []
    table = pq.read_table(Path(dataset) / "manifest" / "shots.parquet", columns=["scene_id", "kept"])
    keys = {s for s, kept in zip(table["scene_id"].to_pylist(), table["kept"].to_pylist()) if kept and s}
    ranked = sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    return sorted(ranked[:n])


def load_summary(dataset: str | Path) -> dict:
    """DIR/dataset.json; FileNotFoundError that says what to run when it is missing."""
    path = Path(dataset) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} is not a curated dataset: {path} is missing (run `lct curate` first)")
    return json.loads(path.read_text())


def failures(dataset: str | Path) -> list[dict]:
    """The films.parquet rows of the films that are not `ok`."""
    films = pq.read_table(Path(dataset) / "manifest" / "films.parquet")
    return [r for r in films.to_pylist() if r["status"] != "ok"]


# -- verification ------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class DatasetCheck:
    shards: int = 0
    samples: int = 0
    shot_rows: int = 0
    problems: list[str] = field(default_factory=list)


def tar_members(path: Path) -> dict[str, set[str]]:
    """scene key -> member extensions of a WebDataset shard, read from the tar headers only."""
    members: dict[str, set[str]] = defaultdict(set)
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            members[key].add(ext)
    return members


def check_dataset(out: Path, uris: list[str] | None = None) -> DatasetCheck:
    """Shards on disk == shards in dataset.json (size, sha256, sample count); every kept shot row
    of the manifest <-> a `{i:03d}.mp4` of its scene sample in its shard; every ok film's scene count;
    every film with scenes in the shards is an ok film of the manifest; and, given the `uris` a run
    was asked to curate, each of them has its row in the manifest (a second writer into the same
    folder overwrites parts and shards: the films it pushed out are caught here)."""
    out = Path(out)
    check = DatasetCheck()
    problems = check.problems
    doc_path = out / SUMMARY
    if not doc_path.is_file():
        problems.append(f"{doc_path} is missing")
        return check
    missing = [p for p in ("manifest/films.parquet", "manifest/shots.parquet") if not (out / p).is_file()]
    if missing:
        problems += [f"{out / p} is missing" for p in missing]
        return check
    listed = {s["name"]: s for s in json.loads(doc_path.read_text())["shards"]}
    on_disk = {p.name for p in list_shards(out)}
    problems += [f"shard {n} is in dataset.json but not in {out / SHARDS}" for n in sorted(set(listed) - on_disk)]
    problems += [f"shard {n} is not listed in dataset.json" for n in sorted(on_disk - set(listed))]
    samples: dict[str, dict[str, set[str]]] = {}
    for name in sorted(set(listed) & on_disk):
        path, info = out / SHARDS / name, listed[name]
        if path.stat().st_size != info["bytes"]:
            problems.append(f"shard {name}: {path.stat().st_size} bytes on disk, dataset.json says {info['bytes']}")
        if (digest := sha256_file(path)) != info["sha256"]:
            problems.append(f"shard {name}: sha256 {digest} on disk, dataset.json says {info['sha256']}")
        try:
            samples[name] = tar_members(path)
        except (tarfile.TarError, OSError) as err:
            problems.append(f"shard {name} is damaged: it cannot be read as a tar ({type(err).__name__}: {err}); "
                            f"run `lct curate` on the same --out again to curate its films again")
            continue
        if len(samples[name]) != info["samples"]:
            problems.append(f"shard {name}: {len(samples[name])} samples, dataset.json says {info['samples']}")
    check.shards = len(samples)
    check.samples = sum(len(s) for s in samples.values())

    shots = pq.read_table(out / "manifest" / "shots.parquet", columns=["scene_id", "shot_index", "shard", "kept"])
    expected: dict[tuple[str, str], set[str]] = defaultdict(set)  # (shard, scene) -> mp4 members
    for row in shots.to_pylist():
        if row["kept"]:
            check.shot_rows += 1
            expected[(row["shard"], row["scene_id"])].add(f"{row['shot_index']:03d}.mp4")
    actual = {(shard, key): {e for e in exts if e.endswith("mp4")} for shard, keys in samples.items()
              for key, exts in keys.items()}
    for where in sorted(set(expected) | set(actual)):
        want, have = expected.get(where, set()), actual.get(where)
        if have is None:
            if where[0] in samples or where[0] not in listed:
                problems.append(f"scene {where[1]} of the manifest has no sample in shard {where[0]}")
        elif want != have:
            problems.append(f"scene {where[1]} in {where[0]}: manifest shots {sorted(want)} but sample has {sorted(have)}")
    scenes_per_film = Counter(key.rsplit("-", 1)[0] for _, key in actual)
    films = pq.read_table(out / "manifest" / "films.parquet", columns=["film_id", "uri", "status", "n_scenes"])
    film_rows = films.to_pylist()
    for row in film_rows:
        if row["status"] == "ok" and scenes_per_film[row["film_id"]] != row["n_scenes"]:
            problems.append(f"film {row['film_id']}: n_scenes={row['n_scenes']} but "
                            f"{scenes_per_film[row['film_id']]} samples in the shards")
    ok = {r["film_id"] for r in film_rows if r["status"] == "ok"}
    for film_id in sorted(set(scenes_per_film) - ok):
        problems.append(f"film {film_id} has {scenes_per_film[film_id]} scenes in the shards but is not an ok film "
                        f"of {out / 'manifest' / 'films.parquet'}")
    for film_id in sorted({key.rsplit("-", 1)[0] for _, key in expected} - ok):
        problems.append(f"film {film_id} has kept shot rows in manifest/shots.parquet but is not an ok film "
                        "of manifest/films.parquet")
    if uris is not None:
        in_manifest = {r["uri"] for r in film_rows}
        lost = [u for u in uris if u not in in_manifest]
        problems += [f"film {u} was to be curated but has no row in {out / 'manifest' / 'films.parquet'} "
                     "(was another run writing into the same folder?)" for u in lost[:50]]
        if len(lost) > 50:
            problems.append(f"... and {len(lost) - 50} more films without a manifest row")
    return check
