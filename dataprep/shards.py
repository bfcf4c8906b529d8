"""WebDataset shards of scenes, committed together with their manifest rows.

A shard only ever holds whole films, so a film is either entirely visible or not at all.
Commit order for one shard: close `scenes-NNNNNN.tar.tmp` (fsync) -> write the manifest
part (shots, then films = the commit marker) -> rename the tar to `scenes-NNNNNN.tar`.
`recover()` at the start of a run finishes a rename a crash interrupted, drops parts
whose shard is gone or damaged (size or sha256 not the committed ones), moves unreadable
parts aside (`manifest.repair`), and deletes uncommitted temporary shards, so a killed
run never leaves a half-written shard visible and a damaged one is curated again. A finished shard no part accounts for (the journal
was deleted or damaged) is never deleted: it is moved to `shards/orphaned/` and reported,
and its films are curated again.

Tar members have a fixed mtime, owner and mode, and keys are deterministic, so the same
films in the same order give byte-identical shards.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import sha256_file
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
    committed = set()
    for seq, _films, _shots, shard in manifest.read_parts(out_dir):
        if shard is None:
            continue
        final, tmp = shard_dir / shard["name"], shard_dir / (shard["name"] + ".tmp")
        if not final.exists() and tmp.exists():
            os.replace(tmp, final)  # the crash came between the commit marker and the rename
        if final.exists() and (problem := _damage(final, shard)):
            manifest.drop_part(out_dir, seq)  # its films are curated again; the shard goes to orphaned/ below
            notes.append(f"shard {shard['name']} is damaged ({problem}): its films are curated again")
        elif final.exists():
            committed.add(shard["name"])
        else:
            manifest.drop_part(out_dir, seq)
    for tmp in shard_dir.glob("*.tmp"):
        tmp.unlink()  # a shard being written when the run died: never committed
    for stray in sorted(shard_dir.glob("scenes-*.tar")):
        if stray.name not in committed:  # a finished shard without its journal part: keep it, out of the way
            target = _free_name(shard_dir / ORPHANED, stray.name)
            target.parent.mkdir(exist_ok=True)
            os.replace(stray, target)
            notes.append(
                f"shard {stray.name} is not in the manifest journal ({manifest.parts_dir(out_dir)}); moved it to "
                f"{target} (its films are curated again). Delete {shard_dir / ORPHANED} once the dataset is complete."
            )
    return notes


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

