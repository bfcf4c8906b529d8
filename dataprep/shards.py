"""WebDataset shards of scenes, committed together with their manifest rows.

A shard only ever holds whole films, so a film is either entirely visible or not at all.
Commit order for one shard: close `scenes-NNNNNN.tar.tmp` (fsync) -> write the manifest
part (shots, then films = the commit marker) -> rename the tar to `scenes-NNNNNN.tar`.
`recover()` at the start of a run finishes a rename a crash interrupted, drops parts
whose shard is gone, and deletes uncommitted temporary shards, so a killed run never
leaves a half-written shard visible.

Tar members have a fixed mtime, owner and mode, and keys are deterministic, so the same
films in the same order give byte-identical shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import sha256_file

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


def recover(out_dir: Path) -> None:
    """Bring a dataset dir left by a killed run back to a consistent state."""
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    committed = set()
    for seq, _films, _shots, shard in manifest.read_parts(out_dir):
        if shard is None:
            continue
        final, tmp = shard_dir / shard["name"], shard_dir / (shard["name"] + ".tmp")
        if not final.exists() and tmp.exists():
            os.replace(tmp, final)  # the crash came between the commit marker and the rename
        if final.exists():
            committed.add(shard["name"])
        else:
            manifest.drop_part(out_dir, seq)
    for tmp in shard_dir.glob("*.tmp"):
        tmp.unlink()
    for stray in shard_dir.glob("scenes-*.tar"):
        if stray.name not in committed:  # never committed: its films will be curated again
            stray.unlink()


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
            manifest.write_part(self.out_dir, self.seq, film_rows, shot_rows, None)
            self.seq += 1

    def flush(self) -> None:
        """Write and commit the open shard (no-op when empty)."""
        if not self.films:
            return
        name = SHARD_PATTERN.format(self.next_shard)
        final, tmp = self.shard_dir / name, self.shard_dir / (name + ".tmp")
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream, user="lct", group="lct", mode=0o444, mtime=FIXED_MTIME)
            for film in self.films:
                for sample in film.samples:
                    writer.write(sample)
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        info = {"name": name, "samples": self.count, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        film_rows = [dict(f.film_row, shard=name) for f in self.films]
        shot_rows = [dict(r, shard=name) if r["kept"] else r for f in self.films for r in f.shot_rows]
        manifest.write_part(self.out_dir, self.seq, film_rows, shot_rows, info)
        os.replace(tmp, final)
        self.committed.append(info)
        self.seq += 1
        self.next_shard += 1
        self.films, self.count, self.size = [], 0, 0

