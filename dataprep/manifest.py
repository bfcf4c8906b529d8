"""The Parquet manifest of a curated dataset, written as a crash-safe journal.

Every committed unit (one closed shard with its films, or a batch of failed/skipped films)
is a numbered *part*: `manifest/parts/{seq:06d}.shots.parquet`, then
`manifest/parts/{seq:06d}.films.parquet` (the films part is the commit marker; it carries
the shard's name, sample count, size and sha256 in its schema metadata). A run that is
killed leaves at most an uncommitted temporary file behind, which the next run removes.
At the end of a run the parts are folded into `manifest/films.parquet` and
`manifest/shots.parquet` (the latest part wins for a film URI curated twice, e.g. a film
that failed and then succeeded after a fix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FILM_SCHEMA = pa.schema(
    [
        ("film_id", pa.string()),
        ("uri", pa.string()),
        ("status", pa.string()),  # ok | failed | skipped
        ("error", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("n_frames", pa.int64()),
        ("n_detected", pa.int32()),  # shots found by the detector, before filters
        ("decode_errors", pa.int32()),  # errors FFmpeg logged decoding the film (damage it concealed)
        ("corrupt_frames", pa.int32()),  # decoded frames FFmpeg flagged as corrupt
        ("n_shots", pa.int32()),  # shots written into scenes
        ("n_scenes", pa.int32()),
        ("shard", pa.string()),
    ]
)

SHOT_SCHEMA = pa.schema(
    [
        ("film_id", pa.string()),
        ("scene_id", pa.string()),  # null when the shot was dropped
        ("shot_index", pa.int32()),  # index inside its scene = its `{i:03d}.mp4`; null when dropped
        ("film_shot_index", pa.int32()),  # index among all candidate shots of the film
        ("detected_shot", pa.int32()),  # the detector's shot it was cut from (long shots are split)
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),  # exclusive
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("caption", pa.string()),
        ("caption_source", pa.string()),  # sidecar | vlm | coca | none
        ("clip", pa.list_(pa.float32())),
        ("shard", pa.string()),
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
    ]
)


def parts_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "manifest" / "parts"


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)  # never leave a partial part behind
        raise
    os.replace(tmp, path)


def next_seq(out_dir: Path) -> int:
    seqs = [int(p.name.split(".")[0]) for p in parts_dir(out_dir).glob("*.films.parquet")]
    return max(seqs, default=-1) + 1


def write_part(out_dir: Path, seq: int, films: list[dict], shots: list[dict], shard: dict | None) -> None:
    """Commit one part. `shard` = {name, samples, bytes, sha256} or None for a part without a shard."""
    directory = parts_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(pa.Table.from_pylist(shots, schema=SHOT_SCHEMA), directory / f"{seq:06d}.shots.parquet")
    meta = {b"lct.shard": json.dumps(shard).encode()}
    films_table = pa.Table.from_pylist(films, schema=FILM_SCHEMA.with_metadata(meta))
    _write_atomic(films_table, directory / f"{seq:06d}.films.parquet")


def repair(out_dir: Path) -> list[str]:
    """Move aside every part that cannot be read whole (a truncated Parquet file, a films part without
    its shots part) into `manifest/parts/damaged/`; returns what was moved and why.

    What such a part recorded is then not in the dataset: its films count as not curated and are
    curated again, and its shard (no longer accounted for) is moved aside by `shards.recover`.
    """
    directory = parts_dir(out_dir)
    if not directory.is_dir():
        return []
    notes = []
    for films_path in sorted(directory.glob("*.films.parquet")):
        shots_path = directory / films_path.name.replace(".films.", ".shots.")
        try:
            if not shots_path.exists():
                raise FileNotFoundError(f"its shots part {shots_path.name} is missing")
            films = pq.read_table(films_path)
            json.loads((films.schema.metadata or {}).get(b"lct.shard", b"null"))
            pq.read_table(shots_path)
        except (OSError, ValueError, pa.ArrowException) as err:  # ArrowInvalid: truncated / not Parquet
            damaged = directory / "damaged"
            try:
                damaged.mkdir(exist_ok=True)
                for path in (films_path, shots_path):
                    if path.exists():
                        os.replace(path, damaged / path.name)
            except OSError as move_err:
                raise RuntimeError(
                    f"manifest part {films_path} is damaged ({err}) and could not be moved aside ({move_err}); "
                    f"move {films_path} and {shots_path} out of {directory} by hand and run again: "
                    "its films are curated again"
                ) from move_err
            notes.append(f"manifest part {films_path.name} is damaged ({type(err).__name__}: {err}); moved it to "
                         f"{damaged} and its films are curated again")
    return notes


def read_parts(out_dir: Path) -> list[tuple[int, pa.Table, pa.Table, dict | None]]:
    """Committed parts in order: (seq, films, shots, shard info). Removes stray temporary files."""
    directory = parts_dir(out_dir)
    if not directory.is_dir():
        return []
    for tmp in directory.glob("*.tmp"):
        tmp.unlink()
    parts = []
    for films_path in sorted(directory.glob("*.films.parquet")):
        seq = int(films_path.name.split(".")[0])
        shots_path = directory / f"{seq:06d}.shots.parquet"
        if not shots_path.exists():
            raise RuntimeError(f"manifest part {films_path} has no {shots_path.name}: the journal is damaged")
        films = pq.read_table(films_path)
        shard = json.loads((films.schema.metadata or {}).get(b"lct.shard", b"null"))
        parts.append((seq, films, pq.read_table(shots_path), shard))
    return parts


def ok_films(out_dir: Path) -> dict[str, str]:
    """uri -> film_id of the films `ok` in the committed parts (the latest part wins). Read only:
    what a resumed run skips (dataprep/run.py) and what the ingest flow reports as done."""
    status: dict[str, tuple[str, str]] = {}
    for films_path in sorted(parts_dir(out_dir).glob("*.films.parquet")):
        try:
            rows = pq.read_table(films_path, columns=["uri", "film_id", "status"]).to_pylist()
        except (OSError, pa.ArrowException):  # a damaged part: its films are not done (`repair` moves it aside)
            continue
        for row in rows:
            status[row["uri"]] = (row["status"], row["film_id"])
    return {uri: fid for uri, (st, fid) in status.items() if st == "ok"}


def drop_part(out_dir: Path, seq: int) -> None:
    """Remove an uncommitted part (its shard never became visible)."""
    directory = parts_dir(out_dir)
    (directory / f"{seq:06d}.films.parquet").unlink(missing_ok=True)
    (directory / f"{seq:06d}.shots.parquet").unlink(missing_ok=True)


def consolidate(out_dir: Path) -> tuple[pa.Table, pa.Table, list[dict]]:
    """Fold all parts into films.parquet / shots.parquet; returns (films, shots, shards)."""
    latest: dict[str, int] = {}  # uri -> seq of its latest part
    parts = read_parts(out_dir)
    for seq, films, _, _ in parts:
        for uri in films.column("uri").to_pylist():
            latest[uri] = seq
    film_rows, shot_rows, shards = [], [], []
    for seq, films, shots, shard in parts:
        rows = [r for r in films.to_pylist() if latest[r["uri"]] == seq]
        live = {r["film_id"] for r in rows}
        film_rows += rows
        shot_rows += [r for r in shots.to_pylist() if r["film_id"] in live]
        if shard is not None:
            shards.append(shard)
    films_table = pa.Table.from_pylist(film_rows, schema=FILM_SCHEMA)
    shots_table = pa.Table.from_pylist(shot_rows, schema=SHOT_SCHEMA)
    manifest = Path(out_dir) / "manifest"
    _write_atomic(films_table, manifest / "films.parquet")
    _write_atomic(shots_table, manifest / "shots.parquet")
    return films_table, shots_table, shards
