"""WebDataset shards of scenes, committed together with their manifest rows.

A shard only ever holds whole films, so a film is either entirely visible or not at all.
Commit order for one shard: close `scenes-NNNNNN.tar.tmp` (fsync) -> write the manifest
part (shots, then films = the commit marker) -> rename the tar to `scenes-NNNNNN.tar`.
`recover()` at the start of a run finishes a rename a crash interrupted, drops parts
whose shard is gone or damaged (size or sha256 not the committed ones), moves unreadable
parts aside (`manifest.repair`), and deletes uncommitted temporary shards, so a killed
run never leaves a half-written shard visible and a damaged one is curated again. A finished
shard no part accounts for (the journal was deleted or damaged) is never deleted: its part is
rebuilt from the samples' own json (`rebuild_part`: the kept shots, captions and embeddings;
what only the source film knew, e.g. its size and the dropped shots, stays null), or, when the
shard cannot vouch for whole films, it is moved to `shards/orphaned/`, reported, and its films
are curated again.

Tar members have a fixed mtime, owner and mode, and keys are deterministic, so the same
films in the same order give byte-identical shards.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import CorruptSample, SceneSample, raw_samples, sha256_file
from dataprep.lock import OutputUnwritable

SHARD_PATTERN = "scenes-{:06d}.tar"
FIXED_MTIME = 0.0


def sample_bytes(sample: dict) -> int:
    return sum(len(v) for k, v in sample.items() if not k.startswith("__"))


@dataclass
class FilmEntry:
    """One film ready to be written: its scene samples and its manifest rows."""

    samples: list[dict]  # webdataset samples: __key__ + extension -> bytes
    film_row: dict
    shot_rows: list[dict]
    n_bytes: int = field(init=False)

    def __post_init__(self):
        self.n_bytes = sum(sample_bytes(s) for s in self.samples)


ORPHANED = "orphaned"


def recover(out_dir: Path) -> list[str]:
    """Bring a dataset dir left by a killed run back to a consistent state; returns what it had to say."""
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    notes = manifest.repair(out_dir)
    committed, damaged = set(), set()
    for seq, _films, _shots, shard in manifest.read_parts(out_dir):
        if shard is None:
            continue
        final, tmp = shard_dir / shard["name"], shard_dir / (shard["name"] + ".tmp")
        if not final.exists() and tmp.exists():
            os.replace(tmp, final)  # the crash came between the commit marker and the rename
        if final.exists() and (problem := _damage(final, shard)):
            manifest.drop_part(out_dir, seq)  # its films are curated again; the shard goes to orphaned/ below
            damaged.add(shard["name"])
            notes.append(f"shard {shard['name']} is damaged ({problem}): its films are curated again")
        elif final.exists():
            committed.add(shard["name"])
        else:
            manifest.drop_part(out_dir, seq)
    for tmp in shard_dir.glob("*.tmp"):
        tmp.unlink()  # a shard being written when the run died: never committed
    for stray in sorted(shard_dir.glob("scenes-*.tar")):
        if stray.name in committed:
            continue
        # a finished shard without its journal part: rebuild the part from its samples, else keep it out of the way
        why = "it is damaged" if stray.name in damaged else rebuild_part(out_dir, stray)
        journal = f"shard {stray.name} is not in the manifest journal ({manifest.parts_dir(out_dir)})"
        if why is None:
            notes.append(f"{journal}; rebuilt its journal part from the json of its samples (source facts such as "
                         "duration, size and dropped shots are not in a shard: those columns are empty for its films)")
            continue
        target = _free_name(shard_dir / ORPHANED, stray.name)
        target.parent.mkdir(exist_ok=True)
        os.replace(stray, target)
        notes.append(f"{journal} and cannot be rebuilt from its samples ({why}); moved it to {target} (its films "
                     f"are curated again). Delete {shard_dir / ORPHANED} once the dataset is complete.")
    return notes


def rebuild_part(out_dir: Path, path: Path) -> str | None:
    """Commit the journal part of a finished shard from its samples' json; None when done, else why not.

    Only a shard that holds whole films no committed part already has is rebuilt: every sample
    readable with the scene layout (json with film_id, uri, fps, scene_index, shots; one mp4 per
    shot; clip.npy (n_shots, D)), keys `{film_id}-{scene_index:05d}`, scenes 0..n-1 of each film.
    """
    try:
        scenes = [SceneSample.parse(raw) for raw in raw_samples([path])]
    except (CorruptSample, tarfile.TarError, OSError, ValueError, KeyError) as err:
        return f"{type(err).__name__}: {err}"
    done = manifest.ok_films(out_dir)
    films: dict[str, dict] = {}
    shot_rows = []
    for scene in scenes:
        meta = scene.meta if isinstance(scene.meta, dict) else {}
        if not (isinstance(meta.get("film_id"), str) and isinstance(meta.get("uri"), str)
                and isinstance(meta.get("fps"), (int, float)) and isinstance(meta.get("scene_index"), int)
                and isinstance(meta.get("shots"), list) and meta["shots"] and all(isinstance(x, dict) for x in meta["shots"])):
            return f"sample {scene.key!r} lacks film_id, uri, fps, scene_index or shots in its json"
        if scene.key != f"{meta['film_id']}-{meta['scene_index']:05d}":
            return f"sample {scene.key!r} is not scene {meta['scene_index']} of film {meta['film_id']}"
        if meta["uri"] in done:
            return f"film {meta['uri']} is already in the journal"
        try:
            scene.mp4s
            clip = np.load(io.BytesIO(scene.members["clip.npy"]), allow_pickle=False)
        except (CorruptSample, KeyError, ValueError) as err:
            return f"sample {scene.key!r}: {type(err).__name__}: {err}"
        if clip.ndim != 2 or len(clip) != len(scene.shots):
            return f"sample {scene.key!r}: clip.npy has shape {clip.shape} for {len(scene.shots)} shots"
        film = films.setdefault(meta["film_id"], {"film_id": meta["film_id"], "uri": meta["uri"], "status": "ok",
                                                  "fps": float(meta["fps"]), "scenes": [], "n_shots": 0})
        film["scenes"].append(meta["scene_index"])
        film["n_shots"] += len(scene.shots)
        for shot, embedding in zip(scene.shots, clip):
            shot_rows.append({**{k: shot.get(k) for k in ("shot_index", "start_frame", "end_frame", "start_s", "end_s",
                                                         "caption", "caption_source")},
                              "film_id": meta["film_id"], "scene_id": scene.key, "clip": embedding.astype(np.float32).tolist(),
                              "shard": path.name, "kept": True})
    for film in films.values():
        if sorted(film["scenes"]) != list(range(len(film["scenes"]))):
            return f"film {film['film_id']} has scenes {sorted(film['scenes'])[:8]} here, not all of its scenes"
    if not films:
        return "it holds no samples"
    film_rows = [{**{k: v for k, v in f.items() if k != "scenes"}, "n_scenes": len(f["scenes"]), "shard": path.name}
                 for f in films.values()]
    info = {"name": path.name, "samples": len(scenes), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest.write_part(out_dir, manifest.next_seq(out_dir), film_rows, shot_rows, info)
    return None


def _damage(path: Path, info: dict) -> str | None:
    """Why a committed shard is not the one its commit recorded (size, then sha256), or None."""
    size = path.stat().st_size
    if size != info["bytes"]:
        return f"{size} bytes, committed with {info['bytes']}"
    if (digest := sha256_file(path)) != info["sha256"]:
        return f"sha256 {digest[:12]}..., committed with {info['sha256'][:12]}..."
    return None


def _free_name(directory: Path, name: str) -> Path:
    """directory/name, or directory/name.N for the first N not taken (orphans never overwrite orphans)."""
    path, n = directory / name, 1
    while path.exists():
        path, n = directory / f"{name}.{n}", n + 1
    return path


class SceneShardWriter:
    """Writes films (whole) into size-limited shards; commits each shard with its manifest part."""

    def __init__(self, out_dir: Path, cfg: ShardConfig):
        self.out_dir = Path(out_dir)
        self.shard_dir = self.out_dir / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        existing = [int(p.name[len("scenes-") : -len(".tar")]) for p in self.shard_dir.glob("scenes-*.tar")]
        self.next_shard = max(existing, default=-1) + 1
        self.seq = manifest.next_seq(self.out_dir)
        self.films: list[FilmEntry] = []  # films of the open shard
        self.count = 0
        self.size = 0
        self.committed: list[dict] = []  # shard infos committed by this writer

    def add(self, film: FilmEntry) -> None:
        """Queue a film's scenes; closes the open shard first when the film would overflow it."""
        if self.films and (
            self.count + len(film.samples) > self.cfg.max_samples or self.size + film.n_bytes > self.cfg.max_bytes
        ):
            self.flush()
        self.films.append(film)
        self.count += len(film.samples)
        self.size += film.n_bytes
        if self.count >= self.cfg.max_samples or self.size >= self.cfg.max_bytes:
            self.flush()

    def record_without_shard(self, film_rows: list[dict], shot_rows: list[dict]) -> None:
        """Commit rows of films that wrote no scene (failed, skipped, or everything dropped)."""
        if film_rows:
            try:
                manifest.write_part(self.out_dir, self.seq, film_rows, shot_rows, None)
            except OSError as err:
                manifest.drop_part(self.out_dir, self.seq)
                raise _unwritable(err, f"the manifest rows of {len(film_rows)} films", manifest.parts_dir(self.out_dir),
                                  0) from err
            self.seq += 1

    def flush(self) -> None:
        """Write and commit the open shard (no-op when empty)."""
        if not self.films:
            return
        name = SHARD_PATTERN.format(self.next_shard)
        final, tmp = self.shard_dir / name, self.shard_dir / (name + ".tmp")
        try:
            self._write_tar(tmp)
            info = {"name": name, "samples": self.count, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
            film_rows = [dict(f.film_row, shard=name) for f in self.films]
            shot_rows = [dict(r, shard=name) if r["kept"] else r for f in self.films for r in f.shot_rows]
            manifest.write_part(self.out_dir, self.seq, film_rows, shot_rows, info)
        except OSError as err:  # disk full, quota, read-only: nothing of this shard becomes visible
            tmp.unlink(missing_ok=True)
            manifest.drop_part(self.out_dir, self.seq)
            what = f"shard {name} ({len(self.films)} films, {self.count} scenes)"
            raise _unwritable(err, what, tmp, self.size) from err
        os.replace(tmp, final)
        self.committed.append(info)
        self.seq += 1
        self.next_shard += 1
        self.films, self.count, self.size = [], 0, 0

    def _write_tar(self, tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream, user="lct", group="lct", mode=0o444, mtime=FIXED_MTIME)
            try:
                for film in self.films:
                    for sample in film.samples:
                        writer.write(sample)
            except OSError:  # the tar is abandoned: neither it nor its stream may write into the closed file later
                writer.tarstream.closed = True
                if hasattr(writer.tarstream.fileobj, "closed"):  # tarfile's _Stream ("w|" mode) flushes in __del__
                    writer.tarstream.fileobj.closed = True
                raise
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())


def _unwritable(err: OSError, what: str, where: Path, needed: int) -> OutputUnwritable:
    """The teaching error for an output that cannot take more bytes: what, where, how much space."""
    try:
        usage = shutil.disk_usage(where.parent)
        space = f"{usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.1f} MB on that filesystem"
    except OSError:
        space = "free space unknown"
    need = f", about {needed / 1e6:.1f} MB needed for it" if needed else ""
    reason = err.strerror or str(err)
    return OutputUnwritable(
        f"could not write {what} to {where}: {reason} (errno {errno.errorcode.get(err.errno, err.errno)}); "
        f"{space}{need}. Nothing of it is visible and the films committed before are kept: free space (or make "
        f"the folder writable) and run the same command again, it resumes where it stopped."
    )

