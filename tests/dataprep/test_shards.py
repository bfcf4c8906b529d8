import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import encode_sample, npy_bytes
from dataprep.shards import FilmEntry, SceneShardWriter, recover


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
