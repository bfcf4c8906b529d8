"""A curation killed mid-run (SIGKILL of `lct curate` and its local Ray) resumes to the clean result."""

import json
import os
import signal
import tarfile
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml

from dataprep.synthetic import SynthConfig, make_films

LCT = str(Path(sys.executable).parent / "lct")
CONFIG = {
    "clips": {"width": 64, "height": 64, "fps": 6.0, "keyframes": 2},
    "embed": {"model": "ViT-S-32-alt"},
    "caption": {"coca": False},
    "shards": {"max_samples": 1},
    "ray": {"max_in_flight": 1, "num_cpus": 2},
}


def lct_curate(films: Path, out: Path, config: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS="", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen(
        [LCT, "curate", str(films), "--out", str(out), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kw,
    )


def layout(out: Path) -> list[tuple]:
    """What must not depend on interruptions: scene keys and shot boundaries."""
    rows = pq.read_table(out / "manifest" / "shots.parquet").to_pylist()
    return sorted(
        (r["film_id"], r["film_shot_index"], r["scene_id"] or "", r["shot_index"] or -1, r["start_frame"],
         r["end_frame"], r["kept"])
        for r in rows
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_clean_result(tmp_path):
    films = tmp_path / "films"
    make_films(SynthConfig(n_films=3, seed=3, hard_cases=False, scenes_per_film=(2, 2)), films)
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump(CONFIG))

    clean = lct_curate(films, tmp_path / "clean", config)
    assert clean.wait(timeout=600) == 0, clean.stdout.read()

    out = tmp_path / "killed"
    proc = lct_curate(films, out, config)
    deadline = time.monotonic() + 300
    while not list((out / "shards").glob("scenes-*.tar")):  # at least one committed shard
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no shard was committed in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its local Ray and the workers
    proc.wait()
    for shard in (out / "shards").glob("*.tar"):  # whatever is visible after the kill is whole
        with tarfile.open(shard) as tar:
            assert all(m.size > 0 for m in tar.getmembers())
    n_films_total = len(list(films.glob("*.mp4")))

    resumed = lct_curate(films, out, config)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert not list((out / "shards").glob("*.tmp"))
    assert layout(out) == layout(tmp_path / "clean")
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["counts"]["films"]["ok"] == n_films_total
    assert doc["this_run"]["skipped"] >= 1  # the committed films were not redone
    # every scene key appears exactly once across the shards
    keys = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)]
    assert len(keys) == len(set(keys)) == doc["counts"]["scenes"]
