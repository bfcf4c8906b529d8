"""One film through probe -> shots -> filters -> clips, from a local path and from an fsspec URL."""


import fsspec
import numpy as np

from dataprep.config import CurateConfig
from dataprep.film import process_film
from dataprep.sidecar import sidecar_uri
from dataprep.synthetic import SynthConfig, load_truth, make_films
from tests._imports import assert_imports_without

CFG = CurateConfig.model_validate({"clips": {"width": 64, "height": 64, "fps": 6.0, "keyframes": 2}})


def test_sidecar_uri():
    assert sidecar_uri("/a/b.c/film.mp4") == "/a/b.c/film.captions.json"
    assert sidecar_uri("s3://bucket/x/film.v2.mkv") == "s3://bucket/x/film.v2.captions.json"
    assert sidecar_uri("film.mp4") == "film.captions.json"


def test_import_without_open_clip():
    """The film task (a Ray task on every CPU) reads sidecar captions without loading a captioning model."""
    assert_imports_without(("open_clip",), "import dataprep.film, dataprep.sidecar")


def test_local_and_remote_film_give_the_same_result(tmp_path):
    (mp4,) = make_films(SynthConfig(n_films=1, seed=5, hard_cases=False), tmp_path / "films")
    local = process_film(str(mp4), CFG, tmp_path / "cache")
    assert local.ok, local.error
    truth = load_truth(mp4)
    assert [s.start_frame for s in local.spans if s.parent_shot == 0][0] == 0
    assert local.n_frames == truth["n_frames"]
    assert len(local.clips) == len(local.kept) > 0
    assert local.sidecar is not None

    fs = fsspec.filesystem("memory")
    fs.pipe("/film-test/f.mp4", mp4.read_bytes())
    fs.pipe("/film-test/f.captions.json", mp4.with_name(mp4.stem + ".captions.json").read_bytes())
    remote = process_film("memory://film-test/f.mp4", CFG, tmp_path / "cache")
    assert remote.ok, remote.error
    assert remote.film_id == local.film_id  # named by content, not by where it lives
    assert [(s.start_frame, s.end_frame, s.drop_reason) for s in remote.spans] == [
        (s.start_frame, s.end_frame, s.drop_reason) for s in local.spans
    ]
    assert [c.mp4 for c in remote.clips] == [c.mp4 for c in local.clips]
    assert all(np.array_equal(a.keyframes, b.keyframes) for a, b in zip(remote.clips, local.clips))
    assert remote.sidecar == local.sidecar
    assert not list((tmp_path / "cache").iterdir())  # the remote copy is gone after the call


def test_unreachable_remote_film_is_a_failed_result(tmp_path):
    result = process_film("memory://film-test/missing.mp4", CFG, tmp_path / "cache")
    assert not result.ok and "FileNotFoundError" in result.error
