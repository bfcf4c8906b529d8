import hashlib
import json
import pickle
import time

import pytest
import torch

from model import LatentCodecConfig, TextEncoderConfig, load_export, save_export
from model.export import ExportError, load_bundle, write_export
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
    with pytest.raises(ValueError, match=r"does not match .*'depth' is 3 in config.json but model.safetensors holds 2"):
        load_export(tmp_path)
    path.write_text(json.dumps({**config, "dropout": 0.1}))
    with pytest.raises(ValueError, match=r"fields \['dropout'\] that LCTConfig does not know"):
        load_export(tmp_path)


# -- hostile or damaged exports (issue 15 items 5, 6) ------------------------------------------------
def test_a_hostile_config_is_refused_from_the_header_before_anything_is_allocated(tmp_path):
    save_export(make_model(), tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    # ~2.7e11 parameters: building this model for real would try to allocate about 1 TB
    path.write_text(json.dumps({**config, "width": 65536, "heads": 64}))
    with pytest.raises(ExportError, match=r"does not match .*shape mismatches"):
        load_export(tmp_path)


@pytest.mark.timeout(60)            # on a regression the meta build of a million blocks runs for hours
def test_a_hostile_block_count_is_refused_before_building(tmp_path):
    save_export(make_model(), tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "depth": 1_000_000}))
    started = time.perf_counter()
    with pytest.raises(ExportError, match=r"'depth' is 1000000 in config.json but model.safetensors holds 2 blocks"):
        load_export(tmp_path)
    assert time.perf_counter() - started < 5


def wan_export(directory):
    """A tiny random Wan model saved as an export (model.safetensors, config.json, diffusers/)."""
    from examples.make_tiny_wan import TRANSFORMER
    from model.wan import WanConfig, build_wan

    torch.manual_seed(0)
    return save_export(build_wan(WanConfig(dict(TRANSFORMER), text_len=8)), directory)


@pytest.mark.timeout(60)
def test_a_hostile_wan_export_config_is_refused_before_allocating(tmp_path):
    directory = wan_export(tmp_path / "export")
    assert load_export(directory).cfg.depth == 2
    path = directory / "config.json"
    config = json.loads(path.read_text())

    def hostile(**transformer):
        path.write_text(json.dumps({**config, "transformer": {**config["transformer"], **transformer}}))
        started = time.perf_counter()
        with pytest.raises(ExportError, match=r"config.json") as caught:
            load_export(directory)
        assert time.perf_counter() - started < 5             # refused from the header, nothing built
        return " ".join(str(caught.value).split())

    assert "'transformer.num_layers' is 1000000 in config.json" in hostile(num_layers=1_000_000)
    # RoPE tables of 4M positions: ~370 MB that no weight in the file accounts for
    said = hostile(rope_max_seq_len=4_000_000)
    assert "'transformer.rope_max_seq_len' is 4000000" in said and "MiB" in said
    assert "['bogus']" in hostile(bogus=1)                  # was a TypeError traceback from diffusers
    path.write_text(json.dumps({**config, "transformer": 5}))
    with pytest.raises(ExportError, match=r"config.json: .*transformer must be a dict"):
        load_export(directory)


def test_a_corrupt_safetensors_file_is_named_without_pickle_advice(tmp_path):
    save_export(make_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    for damaged in (b"\x00" * 64, data[: len(data) // 2], bytes(reversed(data[:4096]))):
        weights.write_bytes(damaged)
        with pytest.raises(ExportError, match=r"model.safetensors") as caught:
            load_export(tmp_path)
        assert "weights_only" not in str(caught.value) and "pickle" not in str(caught.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"config.json is not valid JSON"):
        load_export(tmp_path)


def test_an_lct_json_missing_keys_names_them(tmp_path):
    write_export(make_model(), tmp_path / "export", text=TextEncoderConfig(), codec=LatentCodecConfig(size=(16, 16)),
                 frames=4, fps=8.0, step=1)
    info_path = tmp_path / "export" / "lct.json"
    info = json.loads(info_path.read_text())
    assert load_bundle(tmp_path).frames == 4
    info_path.write_text(json.dumps({k: v for k, v in info.items() if k not in ("codec", "frames")}))
    with pytest.raises(ExportError, match=r"lct.json lacks \['codec', 'frames'\]"):
        load_bundle(tmp_path)
    info_path.write_text(json.dumps({**info, "codec": {**info["codec"], "kind": 3, "bogus": 1}}))
    with pytest.raises(ExportError, match=r"lct.json: its text or codec section is not valid"):
        load_bundle(tmp_path)


def test_cli_generate_exits_2_on_a_damaged_export(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    write_export(make_model(), tmp_path / "run" / "export", text=TextEncoderConfig(),
                 codec=LatentCodecConfig(size=(16, 16)), frames=4, fps=8.0, step=1)
    (tmp_path / "run" / "export" / "model.safetensors").write_bytes(b"garbage" * 10)
    scene = tmp_path / "scene.yaml"
    scene.write_text("global: a room\nshots:\n  - prompt: a shot\n")
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path / "run"), "--scene", str(scene),
                                      "--out", str(tmp_path / "out")])
    said = "".join(result.output.split())                     # rich wraps long lines, even inside a path
    assert result.exit_code == 2, result.output
    assert "model.safetensorsisnotareadablesafetensorsfile" in said and "weights_only" not in said
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, said", [
    ("size", 5, "'size' must be [H, W], two positive ints, got 5"),
    ("fps", None, "'fps' must be a number > 0, got None"),
    ("frames", "x", "'frames' must be a positive int (video frames per shot), got 'x'"),
])
def test_cli_generate_and_eval_exit_2_on_a_bad_lct_json_field(tmp_path, field, value, said):
    """Was exit 1 with a traceback (size, fps) or a message naming neither lct.json nor the key (frames)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    export = write_export(make_model(), tmp_path / "run" / "export", text=TextEncoderConfig(),
                          codec=LatentCodecConfig(size=(16, 16)), frames=4, fps=8.0, step=1)
    info = json.loads((export / "lct.json").read_text())
    (export / "lct.json").write_text(json.dumps({**info, field: value}))
    scene = tmp_path / "scene.yaml"
    scene.write_text("global: a room\nshots:\n  - prompt: a shot\n")
    data = tmp_path / "data"                                   # passes eval's is-a-dataset check only
    (data / "shards").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    (data / "shards" / "scenes-000000.tar").write_bytes(b"")
    runner = CliRunner()
    for args in (["generate", "--scene", str(scene)], ["eval", "--data", str(data)]):
        result = runner.invoke(app, [*args, "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (args[0], result.output, result.exception)
        flat = " ".join(result.output.split())
        assert "lct.json:" in "".join(result.output.split()) and said in flat, (args[0], flat)
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def zero_the_data(weights):
    """model.safetensors with every data byte zeroed, the header (and so every shape) intact."""
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:header] + bytes(len(data) - header))


def test_zeroed_weights_under_an_intact_header_are_refused_by_their_hash(tmp_path):
    export = write_export(make_model(seed=1), tmp_path / "export", text=TextEncoderConfig(),
                          codec=LatentCodecConfig(size=(16, 16)), frames=4, fps=8.0, step=1)
    info = json.loads((export / "lct.json").read_text())
    assert info["weights_sha256"] == hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    load_bundle(export)
    zero_the_data(export / "model.safetensors")
    load_export(export)                                       # the header alone cannot tell
    with pytest.raises(ExportError, match=r"model.safetensors does not match lct.json's weights_sha256: "
                                          r"the file is damaged or was replaced"):
        load_bundle(export)
    # an export written before lct.json had the hash still loads
    (export / "lct.json").write_text(json.dumps({k: v for k, v in info.items() if k != "weights_sha256"}))
    assert load_bundle(export).frames == 4
    (export / "lct.json").write_text(json.dumps({**info, "weights_sha256": 7}))
    with pytest.raises(ExportError, match=r"lct.json: 'weights_sha256' must be 64 lowercase hex digits, got 7"):
        load_bundle(export)


def test_a_wan_export_checks_its_weights_hash(tmp_path):
    from examples.make_tiny_wan import TRANSFORMER
    from model.wan import WanConfig, build_wan

    torch.manual_seed(0)
    model = build_wan(WanConfig(dict(TRANSFORMER), text_len=8))
    export = write_export(model, tmp_path / "export", text=TextEncoderConfig(), step=1, frames=5, fps=8.0,
                          codec=LatentCodecConfig(size=(16, 16)), flow_shift=3.0)
    assert (export / "diffusers" / "transformer").is_dir()   # only the bundle's own weights are hashed
    assert load_bundle(export).model.cfg.depth == 2
    zero_the_data(export / "model.safetensors")
    with pytest.raises(ExportError, match=r"does not match lct.json's weights_sha256"):
        load_bundle(export)


def test_an_export_written_before_max_shots_became_context_shots_loads(tmp_path):
    model = make_model(context_shots=4)
    save_export(model, tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    assert config.pop("context_shots") == 4
    path.write_text(json.dumps({**config, "max_shots": 4}))          # config.json as lct wrote it before
    assert load_export(tmp_path).cfg == model.cfg
