import json
import pickle

import pytest
import torch

from model import load_export, save_export
from tests.model.test_lct import CFG, SHAPES, make_model, make_scene, run


def test_round_trip_gives_identical_outputs(tmp_path):
    model = make_model("context_causal", seed=3, mlp_ratio=2.0)  # a non-default config
    save_export(model, tmp_path / "export")
    loaded = load_export(tmp_path / "export")
    assert loaded.cfg == model.cfg and not loaded.training
    scene, t = make_scene(SHAPES), torch.tensor([[0.2, 0.5, 0.9]])
    for a, b in zip(run(model, [scene], t)[0], run(loaded, [scene], t)[0]):
        assert torch.equal(a, b)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["attention"] == "context_causal" and config["patch"] == list(CFG.patch)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_export(make_model(), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("load_export must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_export(tmp_path)


def test_missing_files_are_named(tmp_path):
    save_export(make_model(), tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['config.json'\]"):
        load_export(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors', 'config.json'\]"):
        load_export(tmp_path / "nowhere")


def test_config_mismatch_is_a_teaching_error(tmp_path):
    save_export(make_model(), tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "width": 128}))
    shapes = r"shape mismatches \['blocks.0.txt.k_norm.weight: file \(16,\) vs config \(32,\)"
    with pytest.raises(ValueError, match=r"does not match .*" + shapes):
        load_export(tmp_path)
    path.write_text(json.dumps({**config, "depth": 3}))
    with pytest.raises(ValueError, match=r"does not match .*missing \['blocks\.1\.txt\.mlp"):
        load_export(tmp_path)
    path.write_text(json.dumps({**config, "dropout": 0.1}))
    with pytest.raises(ValueError, match=r"fields \['dropout'\] that LCTConfig does not know"):
        load_export(tmp_path)
