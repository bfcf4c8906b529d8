from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Curation settings that keep tests fast: small clips, a small random CLIP, no CoCa, small shards.
FAST_CURATION = {
    "clips": {"width": 64, "height": 64, "fps": 6.0, "keyframes": 2},
    "embed": {"model": "ViT-S-32-alt", "batch_size": 64},
    "caption": {"coca": False},
    "shards": {"max_samples": 4},
    "ray": {"max_in_flight": 4},
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "testvideo.mp4").is_file():
        pytest.fail(f"shared test clips not found under {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    """A small curated dataset shared by the training, generation and evaluation tests.

    4 synthetic films (seed 11) through the real `curate` on a local Ray: 64x64 clips at 8 fps,
    sidecar captions, histogram scenes. Returns the dataset dir (shards/, manifest/, dataset.json).
    """
    import ray

    from dataprep.config import CurateConfig
    from dataprep.run import curate
    from dataprep.synthetic import SynthConfig, make_films

    films = tmp_path_factory.mktemp("curated-films")
    make_films(SynthConfig(n_films=4, seed=11), films)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    cfg = CurateConfig.model_validate({**FAST_CURATION, "clips": {**FAST_CURATION["clips"], "fps": 8.0}})
    out = tmp_path_factory.mktemp("curated") / "dataset"
    summary = curate([str(films)], out, cfg)
    assert summary.counts.get("ok") == 4, summary
    return out


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory) -> Path:
    """A tiny random Wan 2.1 T2V folder in the diffusers layout (examples/make_tiny_wan.py, seed 0):
    transformer/, vae/, umT5 text_encoder/ + tokenizer/, scheduler/. Shared by the Wan training and
    generation tests (tests/model/test_wan.py perturbs its own copy)."""
    from examples.make_tiny_wan import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("tiny-wan") / "wan", seed=0)
