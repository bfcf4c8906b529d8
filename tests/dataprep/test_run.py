"""`curate` end to end on a real local Ray: synthetic films + every kind of bad input."""

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds

from dataprep.config import CurateConfig
from dataprep.run import CurateFailed, curate, similarity_method
from dataprep.scenes import adjusted_rand_index
from dataprep.synthetic import SynthConfig, load_truth, make_films
from tests.conftest import FAST_CURATION


def fast_config(**overrides) -> CurateConfig:
    data = json.loads(json.dumps(FAST_CURATION))
    for key, value in overrides.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    return CurateConfig.model_validate(data)


@pytest.fixture(scope="session")
def ray_local():
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_films(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("films")
    make_films(SynthConfig(n_films=3, seed=7), out)
    return out


@pytest.fixture(scope="module")
def synth_dataset(ray_local, synth_films, tmp_path_factory) -> tuple[Path, object]:
    """(dataset dir, summary): `synth_films` curated once with fast_config(), for the tests that need that clean
    run (its checks, the Prometheus counters it leaves, the reference a killed run must equal)."""
    out = tmp_path_factory.mktemp("synth-dataset") / "ds"
    return out, curate([str(synth_films)], out, fast_config())


def _png_bytes() -> bytes:
    raw = b"".join(b"\x00" + bytes([200, 10, 10]) * 16 for _ in range(16))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


@pytest.fixture(scope="session")
def bad_films(tmp_path_factory, synth_films) -> tuple[Path, dict[str, str]]:
    """(folder, name -> expected reason substring)."""
    d = tmp_path_factory.mktemp("bad")
    good = sorted(synth_films.glob("*.mp4"))[0].read_bytes()
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "image.mp4").write_bytes(_png_bytes())
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    _audio_only(d / "audio.mp4")
    os.symlink(d / "does-not-exist.mp4", d / "dangling.mp4")
    return d, {
        "random.mp4": "not a video",
        "empty.mp4": "empty",
        "image.mp4": "still image",
        "truncated.mp4": "",
        "audio.mp4": "no video stream",
        "dangling.mp4": "",
    }


def _black(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def _shot_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest" / "shots.parquet").to_pylist()


def _scene_samples(out: Path) -> dict[str, dict]:
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}


def test_curate_synthetic_films(synth_dataset, synth_films):
    out, summary = synth_dataset
    assert summary.counts == {"ok": 3, "failed": 0, "skipped": 0}
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["embed"]["random_init"] is True and doc["scene_similarity"] == "histogram"
    assert doc["caption_sources"] == {"sidecar": doc["counts"]["shots"]}
    assert doc["config"]["clips"]["width"] == 64
    assert CurateConfig.from_yaml(out / "config.yaml") == fast_config()  # the effective config, reusable

    rows = [r for r in _shot_rows(out) if r["kept"]]
    samples = _scene_samples(out)
    # every manifest row <-> a sample member, every sample <-> manifest rows, checksums match
    assert {r["scene_id"] for r in rows} == set(samples)
    for r in rows:
        assert f"{r['shot_index']:03d}.mp4" in samples[r["scene_id"]]
    for shard in doc["shards"]:
        assert hashlib.sha256((out / "shards" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    assert sum(s["samples"] for s in doc["shards"]) == len(samples) == doc["counts"]["scenes"]
    for key, s in samples.items():
        meta = json.loads(s["json"])
        clip = np.load(io.BytesIO(s["clip.npy"]), allow_pickle=False)
        assert clip.shape == (len(meta["shots"]), doc["embed"]["dim"]) and clip.dtype == np.float16
        assert np.allclose(np.linalg.norm(clip.astype(np.float32), axis=1), 1.0, atol=1e-2)
        assert meta["global_caption"].startswith("[Character]")
        assert key == f"{meta['film_id']}-{meta['scene_index']:05d}"

    # scene grouping agrees with the synthetic ground truth
    truths = {}
    films = pq.read_table(out / "manifest" / "films.parquet").to_pylist()
    for f in films:
        truths[f["film_id"]] = load_truth(Path(f["uri"]))
    scores = []
    for film_id, truth in truths.items():
        mine = [r for r in rows if r["film_id"] == film_id]
        true_labels = []
        for r in mine:
            mid = (r["start_frame"] + r["end_frame"]) // 2
            true_labels.append(next(i for i, sc in enumerate(truth["scenes"]) if sc["start_frame"] <= mid < sc["end_frame"]))
        scores.append(adjusted_rand_index(true_labels, [r["scene_id"] for r in mine]))
    assert np.mean(scores) >= 0.9, scores

    # contact sheets: one PNG per scene, a row per shot
    from PIL import Image

    from dataprep.sheets import write_sheets

    sheets = write_sheets(out)
    assert sorted(p.stem for p in sheets) == sorted(samples)
    for path in sheets:
        n_shots = len(json.loads(samples[path.stem]["json"])["shots"])
        width, height = Image.open(path).size
        assert width == 3 * 128 + 360 and height >= n_shots * 132

    # a second run resumes: nothing redone, nothing rewritten
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    again = curate([str(synth_films)], out, fast_config())
    assert again.counts == {"ok": 0, "failed": 0, "skipped": 3}
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before


def test_custom_metrics_reach_the_prometheus_endpoint(synth_dataset):
    """lct_curate_* counters of a run (synth_dataset's 3 films) are exported where the dashboard / Prometheus
    scrape them."""
    import time
    import urllib.request

    port = ray.nodes()[0]["MetricsExportPort"]
    deadline, found = time.monotonic() + 120, {}  # export runs every ~10 s; slow under load
    # poll until the counters are complete: an export can land between two films' increments
    while time.monotonic() < deadline and (len(found) < 3 or found["lct_curate_films_total"] < 3):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for line in body.splitlines():
            for name in ("lct_curate_films_total", "lct_curate_shots_total", "lct_curate_frames_decoded_per_s"):
                if line.startswith("ray_" + name) and (name != "lct_curate_films_total" or 'status="ok"' in line):
                    found[name] = float(line.rsplit(" ", 1)[1])
        time.sleep(2)
    assert found.get("lct_curate_films_total", 0) >= 3, found
    assert found.get("lct_curate_shots_total", 0) > 0 and found.get("lct_curate_frames_decoded_per_s", 0) > 0


def test_bad_films_are_failed_rows_and_the_rest_finishes(ray_local, synth_films, bad_films, tmp_path):
    films = tmp_path / "in"
    films.mkdir()
    for p in sorted(synth_films.glob("synth-00[01].*")):
        shutil.copy(p, films / p.name.replace("synth-000", "my film é 🎬").replace("synth-001", "..\\..\\escape .."))
    shutil.copy(synth_films / "synth-000.mp4", films / "zz copy.mp4")  # same bytes
    _black(films / "black.mp4")
    bad_dir, expected = bad_films
    inputs = [str(films)] + [str(bad_dir / n) for n in expected]
    out = tmp_path / "out"
    with pytest.raises(CurateFailed, match="more than max_failure_rate"):
        curate(inputs, out, fast_config())
    rows = {Path(r["uri"]).name: r for r in pq.read_table(out / "manifest" / "films.parquet").to_pylist()}
    for name, reason in expected.items():
        assert rows[name]["status"] == "failed", rows[name]
        assert reason in rows[name]["error"]
    assert rows["my film é 🎬.mp4"]["status"] == "ok" and rows["my film é 🎬.mp4"]["n_scenes"] > 0
    assert rows["..\\..\\escape ...mp4"]["status"] == "ok"
    assert rows["zz copy.mp4"]["status"] == "skipped" and "duplicate of" in rows["zz copy.mp4"]["error"]
    assert rows["black.mp4"]["status"] == "skipped" and "no usable shots" in rows["black.mp4"]["error"]
    black_shots = [r for r in _shot_rows(out) if r["film_id"] == rows["black.mp4"]["film_id"]]
    assert black_shots and {r["drop_reason"] for r in black_shots} == {"black"}
    assert rows["zz copy.mp4"]["film_id"] == rows["my film é 🎬.mp4"]["film_id"]  # named by content
    ok_before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    assert ok_before
    # nothing is written outside the output directory
    assert {p.name for p in out.iterdir()} <= {".cache", "config.yaml", "dataset.json", "manifest", "shards"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    # with a tolerant policy the same dataset passes, and the good films are not redone
    summary = curate(inputs, out, fast_config(max_failure_rate=1.0))
    assert summary.counts["ok"] == 0 and summary.counts["failed"] == len(expected)
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == ok_before



class SceneVLM:
    """A fake OpenAI-compatible VLM on 127.0.0.1: one caption per shot image, or garbage when `broken`."""

    def __init__(self, broken: bool = False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.calls, self.keys = 0, set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls += 1
                fake.keys.add(self.headers.get("Authorization"))
                parts = body["messages"][0]["content"]
                n = sum(1 for p in parts if p["type"] == "image_url")
                answer = "no json here" if broken else json.dumps({
                    "global": "[Character] Character 1: a shape. [Environment] a room. [Story] things happen.",
                    "shots": [f"Character 1 in shot {i + 1}" for i in range(n)],
                })
                payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.slow
def test_captions_from_vlm_then_coca_when_no_sidecar(ray_local, synth_films, tmp_path, monkeypatch):
    films = tmp_path / "in"
    films.mkdir()
    shutil.copy(synth_films / "synth-002.mp4", films / "nocaps.mp4")  # no sidecar beside it
    monkeypatch.setenv("LCT_TEST_VLM_KEY", "sekret-123")

    good = SceneVLM()
    vlm = {"url": good.url, "model": "fake", "api_key_env": "LCT_TEST_VLM_KEY", "retries": 0, "timeout_s": 10}
    curate([str(films)], tmp_path / "a", fast_config(caption={"vlm": vlm, "coca": False}))
    rows = [r for r in _shot_rows(tmp_path / "a") if r["kept"]]
    assert rows and {r["caption_source"] for r in rows} == {"vlm"}
    assert all(r["caption"].startswith("Character 1 in shot") for r in rows)
    assert good.keys == {"Bearer sekret-123"}  # the key reached the remote actor
    meta = [json.loads(s["json"]) for s in _scene_samples(tmp_path / "a").values()]
    assert all(m["global_caption"].startswith("[Character] Character 1: a shape.") for m in meta)
    assert good.calls == len(meta)  # one request per scene
    assert "sekret-123" not in (tmp_path / "a" / "dataset.json").read_text()

    broken = SceneVLM(broken=True)
    vlm = dict(vlm, url=broken.url)
    curate([str(films)], tmp_path / "b", fast_config(caption={"vlm": vlm, "coca": True, "coca_model": "coca_ViT-B-32",
                                                                      "coca_random": True}))
    doc = json.loads((tmp_path / "b" / "dataset.json").read_text())
    rows = [r for r in _shot_rows(tmp_path / "b") if r["kept"]]
    assert {r["caption_source"] for r in rows} == {"coca"} and all(r["caption"] for r in rows)
    assert doc["vlm_failed_scenes"] == broken.calls > 0


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_run_completes(synth_dataset, synth_films, tmp_path):
    """SIGKILL the Ray worker running a film task: Ray retries it, the dataset is as without the kill."""
    import signal
    import threading
    import time

    import psutil

    from dataprep.run import film_on_node   # the film task's function: Ray titles its worker ray::<name>

    killed: list[int] = []
    stop = threading.Event()

    def assassin():
        while not stop.is_set() and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if any(f"ray::{film_on_node.__name__}" in part for part in (proc.info["cmdline"] or [])):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    break
            time.sleep(0.01)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    try:
        summary = curate([str(synth_films)], tmp_path / "k", fast_config())
    finally:
        stop.set()
        thread.join()
    assert killed, "no film task was caught running"
    assert summary.counts == {"ok": 3, "failed": 0, "skipped": 0}
    clean, summary = synth_dataset
    assert summary.counts["ok"] == 3
    assert sorted(_scene_samples(tmp_path / "k")) == sorted(_scene_samples(clean))


def test_auto_similarity_uses_clip_only_with_pretrained_weights():
    """The embed actor describes itself as {random_init: bool, ...} (dataprep.embed)."""
    from dataprep.config import EmbedConfig
    from dataprep.embed import ClipEmbedder

    described = ClipEmbedder(EmbedConfig(model="ViT-S-32-alt")).description
    assert similarity_method("auto", described) == "histogram"  # random init: colour histograms
    assert similarity_method("auto", dict(described, random_init=False)) == "clip"
    assert similarity_method("auto", {}) == "histogram"  # nothing known: no CLIP
    assert similarity_method("clip", described) == "clip"  # an explicit choice stands


@pytest.mark.slow  # a curation run on a real clip
def test_decode_errors_per_film_are_in_films_parquet(ray_local, shared_data, tmp_path):
    """64 KiB of random bytes in the middle of a real clip: curated, and flagged in films.parquet."""
    from tests.dataprep.test_shots import damaged_copy

    films = tmp_path / "films"
    films.mkdir()
    shutil.copyfile(shared_data / "fades.mp4", films / "clean.mp4")
    damaged_copy(shared_data / "fades.mp4", films / "damaged.mp4")
    curate([str(films)], tmp_path / "ds", fast_config())
    rows = {Path(r["uri"]).name: r for r in pq.read_table(tmp_path / "ds" / "manifest" / "films.parquet").to_pylist()}
    assert rows["clean.mp4"]["decode_errors"] == 0 and rows["clean.mp4"]["corrupt_frames"] == 0
    assert rows["damaged.mp4"]["decode_errors"] > 0, rows["damaged.mp4"]


@pytest.mark.slow  # two curation runs
def test_uncaptioned_scenes_are_counted_failed_past_the_policy_and_warned_by_train(ray_local, synth_films, tmp_path):
    """An erroring VLM on 127.0.0.1: every scene is a counted caption failure and the run fails past
    max_caption_failure_rate, captions written as "" with source none. No captioner at all: the run passes,
    says so, and `lct train`'s preparation warns and records it in the run."""
    from training.config import TrainConfig
    from training.launch import prepare_run

    films = tmp_path / "in"
    films.mkdir()
    shutil.copy(synth_films / "synth-001.mp4", films / "nocaps.mp4")  # no sidecar beside it
    broken = SceneVLM(broken=True)
    vlm = {"url": broken.url, "model": "fake", "api_key_env": None, "retries": 1, "backoff_s": 0.0, "timeout_s": 5}
    with pytest.raises(CurateFailed, match="max_caption_failure_rate=10%"):
        curate([str(films)], tmp_path / "a", fast_config(caption={"vlm": vlm, "coca": False}))
    doc = json.loads((tmp_path / "a" / "dataset.json").read_text())
    scenes = doc["counts"]["scenes"]
    assert scenes > 0 and broken.calls == 2 * scenes  # each scene asked twice (1 retry)
    assert doc["captions"] | {} == {"scenes": scenes, "captioned": 0, "failed": scenes, "no_captioner": 0,
                                    "failure_rate": 1.0, "max_caption_failure_rate": 0.1}
    assert doc["counts"]["scenes_uncaptioned"] == scenes
    rows = [r for r in _shot_rows(tmp_path / "a") if r["kept"]]
    assert {(r["caption"], r["caption_source"]) for r in rows} == {("", "none")}
    assert {json.loads(m["json"])["global_caption"] for m in _scene_samples(tmp_path / "a").values()} == {""}

    # the same with a lenient policy: written, counted, exit 0
    lenient = fast_config(caption={"vlm": vlm, "coca": False}, max_caption_failure_rate=1.0)
    assert curate([str(films)], tmp_path / "b", lenient).captions["failed"] == scenes

    # no sidecar, no VLM, CoCa without weights: not captioned by a random model, not a failure
    summary = curate([str(films)], tmp_path / "c", fast_config(caption={"coca": True}))
    assert summary.captions["no_captioner"] == scenes and summary.captions["failed"] == 0
    assert {r["caption_source"] for r in _shot_rows(tmp_path / "c") if r["kept"]} == {"none"}
    run_dir = tmp_path / "run"
    cfg = TrainConfig.model_validate({"data": {"dataset": str(tmp_path / "c")}, "model": {"preset": "lct-debug"}})
    warning = prepare_run(cfg, run_dir)
    assert warning and f"{scenes} of {scenes} scenes WITHOUT captions" in warning
    info = json.loads((run_dir / "data.json").read_text())
    assert info["captions"] == {"scenes": scenes, "scenes_uncaptioned": scenes} and info["warnings"] == [warning]
