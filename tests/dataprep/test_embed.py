"""ClipEmbedder: unit-norm per-shot embeddings, identical random init everywhere, local checkpoints."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dataprep.config import EmbedConfig
from dataprep.embed import ClipEmbedder, to_model_input

SMALL = "ViT-S-32-alt"  # 43M params, builds in ~0.4 s (ViT-B-32: ~2 s)


def frames(seed: int, k: int = 3, h: int = 96, w: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)  # (K, H, W, 3)


@pytest.fixture(scope="module")
def embedder() -> ClipEmbedder:
    return ClipEmbedder(EmbedConfig(model=SMALL, batch_size=4))


def test_shape_dtype_unit_norm(embedder):
    shots = [frames(0), frames(1, k=1), frames(2, k=5, h=64, w=64)]
    emb = embedder(shots)
    assert emb.shape == (3, embedder.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert embedder(shots[:0]).shape == (0, embedder.dim)


def test_random_init_is_identical_across_instances(embedder):
    torch.manual_seed(1234)  # the global RNG state must not matter
    other = ClipEmbedder(EmbedConfig(model=SMALL, batch_size=2))
    shots = [frames(0), frames(1)]
    np.testing.assert_allclose(other(shots), embedder(shots), atol=1e-5)
    assert embedder.description == {"model": SMALL, "pretrained": None, "random_init": True, "dim": embedder.dim}
    assert not embedder.pretrained_loaded


def test_identical_shots_match_and_different_shots_do_not(embedder):
    a, b = frames(0), frames(7)
    emb = embedder([a, a.copy(), b])
    assert emb[0] @ emb[1] == pytest.approx(1.0, abs=1e-5)
    assert emb[0] @ emb[2] < 1 - 1e-4


def test_batching_does_not_change_embeddings(embedder):
    shots = [frames(i) for i in range(3)]
    big = ClipEmbedder(EmbedConfig(model=SMALL, batch_size=64))
    np.testing.assert_allclose(big(shots), embedder(shots), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(embedder, tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    state = {k: v.contiguous() for k, v in embedder.model.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    loaded = ClipEmbedder(EmbedConfig(model=SMALL, pretrained=str(path)))
    assert loaded.pretrained_loaded and loaded.description["random_init"] is False
    shots = [frames(3), frames(4)]
    np.testing.assert_allclose(loaded(shots), embedder(shots), atol=1e-6)


def test_tag_resolves_to_the_local_cache_only(tmp_path, monkeypatch):
    """A tag loads from ~/.cache/clip when its file is there (as open_clip caches it), never downloads."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ViT-B-32/openai are not in the local cache"):
        ClipEmbedder(EmbedConfig(model="ViT-B-32", pretrained="openai"))
    random = ClipEmbedder(EmbedConfig(model="ViT-B-32"))
    (tmp_path / ".cache/clip").mkdir(parents=True)
    torch.save(random.model.state_dict(), tmp_path / ".cache/clip/ViT-B-32.pt")  # the 'openai' tag's file name
    cached = ClipEmbedder(EmbedConfig(model="ViT-B-32", pretrained="openai"))
    assert cached.pretrained_loaded
    shots = [frames(0)]
    assert not np.allclose(cached(shots), random(shots), atol=1e-4)  # 'openai' implies QuickGELU


def test_bad_pretrained_values_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor an open_clip tag"):
        ClipEmbedder(EmbedConfig(model=SMALL, pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(FileNotFoundError, match="not in the local cache and lct never downloads"):
        ClipEmbedder(EmbedConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"not_a_clip_weight": torch.zeros(1)}, wrong)
    with pytest.raises(RuntimeError, match=f"cannot load {wrong}"):
        ClipEmbedder(EmbedConfig(model=SMALL, pretrained=str(wrong)))
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Nope'"):
        ClipEmbedder(EmbedConfig(model="ViT-Nope"))


def test_bad_frames_are_refused(embedder):
    with pytest.raises(ValueError, match=r"shot 1: expected \(K>=1, H, W, 3\) uint8 keyframes, got \(3, 8, 8\)"):
        embedder([frames(0), np.zeros((3, 8, 8), np.uint8)])
    with pytest.raises(ValueError, match="float32"):
        embedder([frames(0).astype(np.float32)])


def test_preprocess_matches_open_clip_transform(embedder):
    """The torch resize/crop/normalise path agrees with open_clip's own PIL transform."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    y, x = np.mgrid[0:150, 0:300]
    image = np.stack([x * 255 // 299, y * 255 // 149, (x + y) % 256], axis=-1).astype(np.uint8)  # (150, 300, 3)
    transform = image_transform_v2(PreprocessCfg(**embedder.preprocess), is_train=False)
    ours = to_model_input(image[None], embedder.preprocess)[0]  # (3, 224, 224)
    theirs = transform(Image.fromarray(image))
    assert ours.shape == theirs.shape
    error = (ours - theirs).abs()
    assert error.mean() < 0.01, error.mean()  # PIL vs torch bicubic: ~0.004 (max ~0.25 at the hue wrap)


def test_curation_loads_without_open_clip():
    """open_clip (~7 s to import on 2 cores: transformers, sklearn, timm) loads in the embedding and CoCa actors
    only: `lct curate` answers a bad input, and a new Ray worker starts a film task, without it."""
    from tests._imports import assert_imports_without

    assert_imports_without(("open_clip",), "import dataprep.run\nimport dataprep.caption_film\nimport pipelines.cli")
