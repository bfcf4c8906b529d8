import errno
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import encode_sample, npy_bytes
from dataprep.shards import ORPHANED, FilmEntry, SceneShardWriter, recover


def _film(film_id: str, n_scenes: int, payload: int = 100) -> FilmEntry:
    samples, shots = [], []
    for j in range(n_scenes):
        key = f"{film_id}-{j:05d}"
        meta = json.dumps({"film_id": film_id, "scene_index": j}).encode()
        clip = np.full((2, 4), j, np.float16)
        samples.append(encode_sample(key, meta, [bytes([j]) * payload, b"x" * payload], npy_bytes(clip)))
        for i in range(2):
            shots.append(
                {"film_id": film_id, "scene_id": key, "shot_index": i, "film_shot_index": 2 * j + i,
                 "detected_shot": 2 * j + i, "start_frame": 0, "end_frame": 1, "start_s": 0.0, "end_s": 0.1,
                 "caption": "c", "caption_source": "sidecar", "clip": [0.0] * 4, "shard": None, "kept": True,
                 "drop_reason": None}
            )
    row = {"film_id": film_id, "uri": f"/films/{film_id}.mp4", "status": "ok", "error": None, "duration_s": 1.0,
           "fps": 25.0, "width": 64, "height": 64, "codec": "h264", "n_frames": 25, "n_detected": 2,
           "n_shots": 2 * n_scenes, "n_scenes": n_scenes, "shard": None}
    return FilmEntry(samples, row, shots)


def _write(out, films, cfg):
    writer = SceneShardWriter(out, cfg)
    for f in films:
        writer.add(f)
    writer.flush()
    return writer


def test_films_are_never_split_across_shards_and_limits_hold(tmp_path):
    films = [_film(f"f{i}", n) for i, n in enumerate([2, 3, 1, 4, 2])]
    writer = _write(tmp_path, films, ShardConfig(max_samples=4))
    assert [s["samples"] for s in writer.committed] == [2, 4, 4, 2]  # [f0] [f1 f2] [f3] [f4]
    _, shots, shards = manifest.consolidate(tmp_path)
    for shard in shards:
        keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "shards" / shard["name"]), shardshuffle=False)]
        assert len(keys) == shard["samples"]
    by_film = {}
    for row in shots.to_pylist():
        by_film.setdefault(row["film_id"], set()).add(row["shard"])
    assert all(len(v) == 1 for v in by_film.values())


def test_round_trip_every_row_has_a_sample_and_checksums_match(tmp_path):
    films = [_film(f"f{i}", 2) for i in range(5)]
    _write(tmp_path, films, ShardConfig(max_samples=3))
    films_t, shots_t, shards = manifest.consolidate(tmp_path)
    samples = {}
    for shard in shards:
        path = tmp_path / "shards" / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        for s in wds.WebDataset(str(path), shardshuffle=False):
            samples[s["__key__"]] = (shard["name"], s)
    assert films_t.num_rows == 5
    for row in shots_t.to_pylist():
        shard, sample = samples[row["scene_id"]]
        assert row["shard"] == shard
        assert f"{row['shot_index']:03d}.mp4" in sample
    assert sorted(samples) == sorted({r["scene_id"] for r in shots_t.to_pylist()})
    clip = np.load(__import__("io").BytesIO(samples["f1-00001"][1]["clip.npy"]), allow_pickle=False)
    assert clip.dtype == np.float16 and clip.shape == (2, 4) and (clip == 1).all()


def test_same_films_give_byte_identical_shards(tmp_path):
    films = [_film(f"f{i}", 2) for i in range(3)]
    _write(tmp_path / "a", films, ShardConfig(max_samples=4))
    _write(tmp_path / "b", films, ShardConfig(max_samples=4))
    a = sorted((tmp_path / "a" / "shards").glob("*.tar"))
    b = sorted((tmp_path / "b" / "shards").glob("*.tar"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_recover_after_crashes(tmp_path):
    writer = _write(tmp_path, [_film("f0", 2)], ShardConfig(max_samples=2))
    # crash 1: a shard being written, never committed
    (tmp_path / "shards" / "scenes-000001.tar.tmp").write_bytes(b"partial")
    # crash 2: committed part but the rename did not happen
    w2 = SceneShardWriter(tmp_path, ShardConfig(max_samples=2))
    w2.add(_film("f1", 2))
    (tmp_path / "shards" / "scenes-000001.tar").rename(tmp_path / "shards" / "scenes-000001.tar.tmp")
    # crash 3: a manifest part whose shard vanished entirely
    manifest.write_part(tmp_path, 7, [dict(_film("f9", 1).film_row, shard="scenes-000009.tar")], [],
                        {"name": "scenes-000009.tar", "samples": 1, "bytes": 1, "sha256": "0"})
    recover(tmp_path)
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == ["scenes-000000.tar", "scenes-000001.tar"]
    films, _, shards = manifest.consolidate(tmp_path)
    assert sorted(films.column("film_id").to_pylist()) == ["f0", "f1"]
    assert [s["name"] for s in shards] == names
    assert writer.committed[0]["name"] == "scenes-000000.tar"
    # a new writer continues the numbering
    assert SceneShardWriter(tmp_path, ShardConfig()).next_shard == 2


def test_failed_rows_committed_without_shard_latest_wins(tmp_path):
    writer = SceneShardWriter(tmp_path, ShardConfig())
    failed = dict(_film("f0", 1).film_row, status="failed", error="not a video")
    writer.record_without_shard([failed], [])
    writer.add(_film("f0", 1))
    writer.flush()
    films, _, _ = manifest.consolidate(tmp_path)
    assert films.to_pylist()[0]["status"] == "ok"
    assert pq.read_table(tmp_path / "manifest" / "films.parquet").num_rows == 1


def test_missing_journal_never_deletes_a_committed_shard(tmp_path):
    """Issue 15.1: with manifest/parts/ gone, recovery moved every shard aside instead of deleting it."""
    import shutil

    _write(tmp_path, [_film("f0", 2), _film("f1", 2)], ShardConfig(max_samples=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").glob("*.tar")}
    assert len(before) == 2
    shutil.rmtree(manifest.parts_dir(tmp_path))
    notes = recover(tmp_path)
    orphaned = tmp_path / "shards" / ORPHANED
    assert {p.name: p.read_bytes() for p in orphaned.iterdir()} == before  # every byte kept
    assert not list((tmp_path / "shards").glob("*.tar"))                    # none is visible to readers
    assert len(notes) == 2 and all(ORPHANED in n and "not in the manifest journal" in n for n in notes)
    # the films are curated again into the same shard names; a second orphaning never overwrites the first
    _write(tmp_path, [_film("f0", 2)], ShardConfig(max_samples=2))
    assert (tmp_path / "shards" / "scenes-000000.tar").read_bytes() == before["scenes-000000.tar"]
    shutil.rmtree(manifest.parts_dir(tmp_path))
    recover(tmp_path)
    assert sorted(p.name for p in orphaned.iterdir()) == ["scenes-000000.tar", "scenes-000000.tar.1", "scenes-000001.tar"]


def _curated_film(film_id: str, n_scenes: int) -> FilmEntry:
    """A film whose samples carry the json `lct curate` writes (dataprep/assemble.py), plus one dropped shot."""
    film = _film(film_id, n_scenes)
    for j, sample in enumerate(film.samples):
        shots = [{k: r[k] for k in ("shot_index", "start_frame", "end_frame", "start_s", "end_s", "caption",
                                    "caption_source")} for r in film.shot_rows if r["scene_id"] == sample["__key__"]]
        sample["json"] = json.dumps({"film_id": film_id, "uri": film.film_row["uri"], "scene_index": j, "fps": 25.0,
                                     "global_caption": "g", "shots": shots, "versions": {}}, sort_keys=True).encode()
        film.shot_rows[2 * j]["clip"] = [float(j)] * 4
        film.shot_rows[2 * j + 1]["clip"] = [float(j)] * 4
    film.shot_rows.append(dict(film.shot_rows[0], scene_id=None, shot_index=None, kept=False, drop_reason="too_short"))
    return film


def test_missing_journal_is_rebuilt_from_the_shards_own_json(tmp_path):
    """Issue 15.1: `manifest/parts/` deleted, one film added, the same --out curated again: every shard
    stays where it is, the journal is rebuilt from the samples' json, and only the new film is curated;
    a stray shard whose films the journal already holds is moved aside, never deleted."""
    import shutil

    from dataprep.dataset import check_dataset
    from tests.dataprep.test_dataset import _finish

    films = [_curated_film(f"f{i}", n) for i, n in enumerate([2, 1, 2])]
    _write(tmp_path, films, ShardConfig(max_samples=3))   # [f0 f1] [f2]
    _, shots_before, _ = manifest.consolidate(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").glob("*.tar")}
    assert len(before) == 2
    shutil.rmtree(manifest.parts_dir(tmp_path))

    notes, done = _resume(tmp_path, films + [_curated_film("new", 1)])

    assert len(notes) == 2 and all("rebuilt its journal part" in n for n in notes), notes
    assert sorted(done.values()) == ["f0", "f1", "f2"]                        # nothing curated again
    after = {p.name: p.read_bytes() for p in (tmp_path / "shards").glob("*.tar")}
    assert {n: after[n] for n in before} == before and sorted(after) == [*sorted(before), "scenes-000002.tar"]
    assert not (tmp_path / "shards" / ORPHANED).exists()
    _finish(tmp_path)
    assert check_dataset(tmp_path).problems == []
    films_t, shots_t, _ = manifest.consolidate(tmp_path)
    assert {r["film_id"]: (r["status"], r["n_scenes"], r["n_shots"]) for r in films_t.to_pylist()} == {
        "f0": ("ok", 2, 4), "f1": ("ok", 1, 2), "f2": ("ok", 2, 4), "new": ("ok", 1, 2)}
    columns = ["film_id", "scene_id", "shot_index", "start_frame", "end_frame", "caption", "caption_source", "clip", "shard"]
    kept = lambda table: sorted(tuple(str(r[c]) for c in columns) for r in table.to_pylist() if r["kept"])
    assert kept(shots_t.filter(pa.compute.not_equal(shots_t["film_id"], "new"))) == kept(shots_before)

    shutil.copyfile(tmp_path / "shards" / "scenes-000000.tar", tmp_path / "shards" / "scenes-000007.tar")
    notes = recover(tmp_path)                                                  # f0 again: it cannot be rebuilt
    assert len(notes) == 1 and "film /films/f0.mp4 is already in the journal" in notes[0], notes
    assert (tmp_path / "shards" / ORPHANED / "scenes-000007.tar").read_bytes() == before["scenes-000000.tar"]


class _FullDisk:
    """A file whose writes fail with ENOSPC once `limit` bytes are written (what a full disk does)."""

    def __init__(self, f, limit: int):
        self.f, self.left = f, limit

    def write(self, data):
        if len(data) > self.left:
            self.f.write(data[: self.left])
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_mid_shard_is_a_clear_error_and_resume_gives_the_clean_dataset(tmp_path, monkeypatch):
    """Issue 14.4: ENOSPC while the second shard is written -> OutputUnwritable naming the shard, the
    path and the free space; nothing of that shard is visible; a resumed writer gives the clean bytes."""
    import builtins

    from dataprep import shards as shards_module
    from dataprep.lock import OutputUnwritable

    films = [_film(f"f{i}", 2) for i in range(4)]
    _write(tmp_path / "clean", films, ShardConfig(max_samples=4))
    out = tmp_path / "full"
    opened = []

    def open_on_a_full_disk(path, mode="r", *args, **kw):
        f = builtins.open(path, mode, *args, **kw)
        opened.append(path)
        return _FullDisk(f, 3000) if len(opened) == 2 else f   # the second shard hits the full disk

    monkeypatch.setattr(shards_module, "open", open_on_a_full_disk, raising=False)
    writer = SceneShardWriter(out, ShardConfig(max_samples=4))
    writer.add(films[0]), writer.add(films[1])
    writer.add(films[2])
    with pytest.raises(OutputUnwritable) as err:
        writer.add(films[3])
    message = str(err.value)
    assert "shard scenes-000001.tar (2 films, 4 scenes)" in message and str(out / "shards") in message
    assert "No space left on device" in message and "MB free of" in message and "run the same command again" in message
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["scenes-000000.tar"]   # nothing half-visible
    assert sorted(p.name for p in manifest.parts_dir(out).iterdir()) == ["000000.films.parquet", "000000.shots.parquet"]
    monkeypatch.undo()

    # resume as `curate` does: recover, skip the films already ok, write the others in input order
    recover(out)
    done = manifest.ok_films(out)
    _write(out, [f for f in films if f.film_row["uri"] not in done], ShardConfig(max_samples=4))
    clean = sorted((tmp_path / "clean" / "shards").glob("*.tar"))
    resumed = sorted((out / "shards").glob("*.tar"))
    assert [p.name for p in resumed] == [p.name for p in clean]
    assert [p.read_bytes() for p in resumed] == [p.read_bytes() for p in clean]


def _visible_keys(out) -> list[str]:
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return sorted(s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)) if shards else []


def _resume(out, films):
    """What `curate` does on a re-run: recover, skip the films already ok, write the others in input order."""
    notes = recover(out)
    done = manifest.ok_films(out)
    _write(out, [f for f in films if f.film_row["uri"] not in done], ShardConfig(max_samples=2))
    return notes, done


def test_damaged_journal_is_repaired_by_curating_its_films_again(tmp_path):
    """Issue 14.5: a truncated films part and a films part without its shots part are moved aside
    (named in the notes), their shards too, and their films curated again: the clean dataset back."""
    films = [_film(f"f{i}", 2) for i in range(3)]
    _write(tmp_path / "clean", films, ShardConfig(max_samples=2))
    out = tmp_path / "ds"
    _write(out, films, ShardConfig(max_samples=2))
    parts = manifest.parts_dir(out)
    truncated = parts / "000001.films.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    (parts / "000002.shots.parquet").unlink()
    notes, done = _resume(out, films)
    assert sorted(done.values()) == ["f0"]
    assert any("000001.films.parquet is damaged" in n for n in notes), notes
    assert any("000002.films.parquet is damaged" in n and "000002.shots.parquet is missing" in n for n in notes), notes
    assert sorted(p.name for p in (parts / "damaged").iterdir()) == [
        "000001.films.parquet", "000001.shots.parquet", "000002.films.parquet"]
    assert sorted(p.name for p in (out / "shards" / ORPHANED).iterdir()) == ["scenes-000001.tar", "scenes-000002.tar"]
    clean = sorted((tmp_path / "clean" / "shards").glob("*.tar"))
    assert [p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))] == [p.read_bytes() for p in clean]
    films_t, _, shards = manifest.consolidate(out)
    assert sorted(films_t.column("film_id").to_pylist()) == ["f0", "f1", "f2"] and len(shards) == 3


def test_damaged_committed_shard_is_detected_and_its_films_curated_again(tmp_path):
    """Issue 14.7: a committed shard truncated (size) or flipped (sha256) is not the one committed:
    recovery says so, moves it aside and its films are curated again."""
    films = [_film(f"f{i}", 2) for i in range(3)]
    _write(tmp_path / "clean", films, ShardConfig(max_samples=2))
    out = tmp_path / "ds"
    _write(out, films, ShardConfig(max_samples=2))
    one, two = out / "shards" / "scenes-000001.tar", out / "shards" / "scenes-000002.tar"
    one.write_bytes(one.read_bytes()[:700])                      # truncated
    data = bytearray(two.read_bytes())
    data[600] ^= 0xFF                                            # same size, other bytes
    two.write_bytes(bytes(data))
    notes, done = _resume(out, films)
    assert sorted(done.values()) == ["f0"]
    assert any("scenes-000001.tar is damaged (700 bytes" in n for n in notes), notes
    assert any("scenes-000002.tar is damaged (sha256" in n for n in notes), notes
    assert _visible_keys(out) == _visible_keys(tmp_path / "clean")   # every scene once, readable
    _, _, shards = manifest.consolidate(out)
    for shard in shards:
        assert hashlib.sha256((out / "shards" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


@pytest.mark.slow  # the session's curated dataset (real curate on synthetic films)
def test_the_journal_of_a_real_curated_dataset_is_rebuilt_whole(curated, tmp_path):
    """Issue 15.1 on what `lct curate` writes: with manifest/parts/ gone, every shard's part is rebuilt from its
    samples and the manifest's kept shots (captions, embeddings, frames) come back as they were."""
    import shutil

    from dataprep.dataset import check_dataset

    out = tmp_path / "ds"
    shutil.copytree(curated, out)
    shutil.rmtree(manifest.parts_dir(out))
    notes = recover(out)
    assert notes and all("rebuilt its journal part" in n for n in notes), notes
    films, shots, shards = manifest.consolidate(out)
    assert check_dataset(out).problems == []        # dataset.json's shard list, sizes and sha256 still hold
    before = pq.read_table(curated / "manifest" / "films.parquet").to_pylist()
    assert sorted((r["film_id"], r["uri"], r["n_scenes"], r["n_shots"]) for r in films.to_pylist()) == sorted(
        (r["film_id"], r["uri"], r["n_scenes"], r["n_shots"]) for r in before if r["status"] == "ok")
    columns = ["scene_id", "shot_index", "start_frame", "end_frame", "caption", "caption_source", "shard"]
    kept = lambda rows: sorted(tuple(r[c] for c in columns) for r in rows if r["kept"])
    original = pq.read_table(curated / "manifest" / "shots.parquet").to_pylist()
    assert kept(shots.to_pylist()) == kept(original)
    clips = {r["scene_id"] + str(r["shot_index"]): r["clip"] for r in original if r["kept"]}
    assert all(np.allclose(r["clip"], clips[r["scene_id"] + str(r["shot_index"])], atol=1e-2)  # stored as float16
               for r in shots.to_pylist())
