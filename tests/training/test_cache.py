"""data.cache: a tiny Wan's VAE and umT5 encode each clip and prompt once; later epochs, a restarted
worker and a changed encoder behave as a user expects (training/cache.py)."""

import json
import shutil
import tarfile

import pytest
import torch

from examples.make_tiny_wan import make_tiny_wan
from model import TextEncoder, build_codec
from training.cache import EncodingCache
from training.config import DataSection, RecipeSection
from training.data import SceneStream, encode, prepare

PLAIN = RecipeSection(single_shot_prob=0, image_prob=0, text_dropout=0)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("tiny-wan-cache") / "wan", seed=0)


@pytest.fixture(scope="module")
def two_scenes(curated, tmp_path_factory):
    """The curated dataset cut to its first two scenes (one shard): each pass over it stays short."""
    root = tmp_path_factory.mktemp("two-scenes")
    (root / "shards").mkdir()
    with tarfile.open(sorted((curated / "shards").glob("*.tar"))[0]) as tar, \
            tarfile.open(root / "shards" / "scenes-000000.tar", "w") as out:
        keys = list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))[:2]
        for m in tar.getmembers():
            if m.name.split(".")[0] in keys:
                out.addfile(m, tar.extractfile(m))
    return root


def wan_data(curated, wan) -> DataSection:
    return DataSection(dataset=str(curated), frames=5, size=(16, 16), cache=True, codec="vae",
                       codec_path=str(wan / "vae"), text_kind="t5", text_path=str(wan / "text_encoder"),
                       text_max_tokens=32)


class Counted:
    """The data path with forward-call counters on the real VAE encoder and the real umT5."""

    def __init__(self, data: DataSection, root, cached: bool = True):
        self.cache = EncodingCache(root, data.codec_config(), data.text_config()) if cached else None
        self.text = TextEncoder(self.cache.text_config if cached else data.text_config())
        self.codec = build_codec(data.codec_config())
        self.calls = {"vae": 0, "text": 0}
        self.codec.vae.encoder.register_forward_hook(lambda *_: self._count("vae"))
        self.text.encoder.model.register_forward_hook(lambda *_: self._count("text"))
        self.data = data

    def _count(self, what: str) -> None:
        self.calls[what] += 1

    def epoch(self, e: int) -> dict:
        """key -> TrainScene for every scene of epoch e, through the loader's prepare + encode."""
        stream = SceneStream(self.data.dataset, shuffle_buffer=1)
        return {s["__key__"]: encode(prepare(s, self.data, PLAIN, 9, 0), self.text, self.codec, self.cache)
                for s in stream.epoch(e)}


def same(a, b) -> bool:
    return (torch.equal(a.global_text, b.global_text)
            and all(torch.equal(x.latent, y.latent) and torch.equal(x.text, y.text) for x, y in zip(a.shots, b.shots)))


def test_cache_encodes_once_matches_fresh_features_and_follows_the_encoders(two_scenes, wan_dir, tmp_path):
    curated = two_scenes
    data, root = wan_data(curated, wan_dir), tmp_path / "cache"
    first = Counted(data, root)
    epoch0 = first.epoch(0)
    assert first.calls["vae"] > 0 and first.calls["text"] > 0
    assert first.cache.misses == sum(len(s.scene.shots) for s in epoch0.values())

    # epoch 1 in a restarted worker (new encoders, empty in-memory caches): nothing is encoded
    again = Counted(data, root)
    epoch1 = again.epoch(1)
    assert again.calls == {"vae": 0, "text": 0}
    assert set(epoch1) == set(epoch0) and again.cache.hits == first.cache.misses
    assert all(same(epoch0[k].scene, epoch1[k].scene) for k in epoch0)   # the same clip every epoch

    # what the cache returns == what the encoders compute now
    fresh = Counted(data, root, cached=False).epoch(1)
    assert all(same(fresh[k].scene, epoch1[k].scene) for k in fresh)

    # another VAE normalisation and another umT5 config: new ids, nothing stale is read
    changed = tmp_path / "wan-changed"
    shutil.copytree(wan_dir, changed)
    for part, edit in (("vae", {"latents_mean": [0.0, 0.0, 0.0, 0.5]}), ("text_encoder", {"layer_norm_epsilon": 1e-2})):
        f = changed / part / "config.json"
        f.write_text(json.dumps(json.loads(f.read_text()) | edit))
    other = Counted(wan_data(curated, changed), root)
    new = other.epoch(1)
    assert other.calls["vae"] > 0 and other.calls["text"] > 0 and other.cache.hits == 0
    assert other.cache.latent_dir != first.cache.latent_dir
    k = next(iter(new))
    assert not torch.equal(new[k].scene.shots[0].latent, epoch1[k].scene.shots[0].latent)
    assert not torch.equal(new[k].scene.global_text, epoch1[k].scene.global_text)
    assert all(same(new[k].scene, v.scene) for k, v in Counted(wan_data(curated, changed), tmp_path / "c2", cached=False)
               .epoch(1).items())

    # a damaged entry is re-encoded (counted), not a crash
    entry = next(first.cache.latent_dir.rglob("*.safetensors"))
    entry.write_bytes(b"not safetensors")
    repaired = Counted(data, root)
    repaired.epoch(1)
    assert repaired.cache.rebuilt == 1 and repaired.calls["vae"] > 0
    assert json.loads((first.cache.latent_dir / "identity.json").read_text())["codec"]["kind"] == "vae"
