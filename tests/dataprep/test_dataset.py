"""The dataset contract's verification (dataprep/dataset.py check_dataset) on datasets written by the real shard writer."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from dataprep import manifest
from dataprep.config import ShardConfig
from dataprep.dataset import check_dataset
from dataprep.shards import SceneShardWriter
from tests.dataprep.test_shards import _film


def _written(out, films: list[tuple[str, int]], max_samples: int) -> None:
    """Films (id, scenes) through one SceneShardWriter, flushed: shards + journal, not yet folded."""
    writer = SceneShardWriter(out, ShardConfig(max_samples=max_samples))
    for film_id, scenes in films:
        writer.add(_film(film_id, scenes))
    writer.flush()


def _finish(out):
    """What the end of a run does: fold the journal, write dataset.json with the shard list."""
    _, _, shards = manifest.consolidate(out)
    (out / "dataset.json").write_text(json.dumps({"shards": shards}))


def test_check_catches_films_a_second_writer_pushed_out(tmp_path):
    """Issue 15.2: two writers into one folder both commit seq 0 / scenes-000000.tar; the second
    overwrites the first's shard and part, and what remains is self-consistent. The check, given
    the films a run was asked to curate, says which ones are gone."""
    a = [_film(f"a{i}", 1) for i in range(4)]
    b = [_film(f"b{i}", 1) for i in range(2)]
    first, second = SceneShardWriter(tmp_path, ShardConfig(max_samples=2)), SceneShardWriter(tmp_path, ShardConfig(max_samples=2))
    first.add(a[0]), first.add(a[1])          # commits part 0 + scenes-000000.tar
    second.add(b[0]), second.add(b[1])        # commits part 0 + scenes-000000.tar again: a0, a1 are gone
    first.add(a[2]), first.add(a[3])          # part 1 + scenes-000001.tar
    _finish(tmp_path)
    assert check_dataset(tmp_path).problems == []                     # consistent on its own
    uris_a = [f.film_row["uri"] for f in a]
    problems = check_dataset(tmp_path, uris_a).problems
    assert len(problems) == 2 and all("has no row in" in p for p in problems), problems
    assert any("/films/a0.mp4" in p for p in problems) and any("/films/a1.mp4" in p for p in problems)
    assert check_dataset(tmp_path, [f.film_row["uri"] for f in b]).problems == []


def test_check_catches_films_in_shards_but_not_in_the_manifest(tmp_path):
    _written(tmp_path, [("f0", 2), ("f1", 1)], max_samples=4)
    _finish(tmp_path)
    assert check_dataset(tmp_path).problems == []
    path = tmp_path / "manifest" / "films.parquet"
    films = pq.read_table(path)
    pq.write_table(films.filter(pa.compute.not_equal(films["film_id"], "f1")), path)   # f1's film row lost
    problems = check_dataset(tmp_path).problems
    assert any("film f1 has 1 scenes in the shards but is not an ok film" in p for p in problems), problems
    assert any("film f1 has kept shot rows" in p for p in problems), problems


def test_inspect_reports_a_damaged_shard_instead_of_crashing(tmp_path):
    """Issue 14.7: a truncated shard of a finished dataset: `lct inspect` names it and exits 1."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    _written(tmp_path, [("f0", 2), ("f1", 2)], max_samples=2)
    _, _, shards = manifest.consolidate(tmp_path)
    counts = {"films": {"ok": 2, "failed": 0, "skipped": 0}, "shots": 8, "shots_dropped": 0, "scenes": 4, "shards": 2}
    (tmp_path / "dataset.json").write_text(json.dumps({"shards": shards, "counts": counts, "embed": {}}))
    assert check_dataset(tmp_path).problems == []
    shard = tmp_path / "shards" / "scenes-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    problems = check_dataset(tmp_path).problems
    assert any("scenes-000001.tar: 1000 bytes on disk" in p for p in problems), problems
    assert any("scenes-000001.tar is damaged: it cannot be read" in p for p in problems), problems
    result = CliRunner().invoke(app, ["inspect", str(tmp_path), "--sheets", "0"])
    assert result.exit_code == 1, result.output
    assert "damaged" in result.output and "scenes-000001.tar" in result.output and "Traceback" not in result.output


def test_check_catches_manifest_rows_pointing_to_absent_shards_or_members(tmp_path):
    """Issue 15.2: kept shot rows whose shard is gone or whose `{i:03d}.mp4` is not in the sample are named."""
    _written(tmp_path, [("f0", 2), ("f1", 2)], max_samples=2)
    _finish(tmp_path)
    path = tmp_path / "manifest" / "shots.parquet"
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row["scene_id"] == "f0-00001" and row["shot_index"] == 1:
            row["shot_index"] = 7                                    # a member the sample does not have
        if row["film_id"] == "f1":
            row["shard"] = "scenes-000009.tar"                       # a shard that does not exist
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest.SHOT_SCHEMA), path)
    problems = check_dataset(tmp_path).problems
    assert any("scene f0-00001 in scenes-000000.tar: manifest shots ['000.mp4', '007.mp4'] but sample has "
               "['000.mp4', '001.mp4']" in p for p in problems), problems
    assert any("scene f1-00000 of the manifest has no sample in shard scenes-000009.tar" in p for p in problems), problems
    assert any("scene f1-00001 in scenes-000001.tar: manifest shots [] but sample has" in p for p in problems), problems
