"""Tuning a (tiny, random) pre-trained Wan: configuration from the folder, bad folders, end to end."""

import json
import math
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from training.config import TrainConfig


def test_pretrained_alone_selects_wan_and_the_folder_parts(wan_dir):
    cfg = TrainConfig.model_validate({"model": {"pretrained": str(wan_dir)}, "data": {"frames": 5, "size": [16, 16]}})
    assert cfg.model.backbone == "wan"
    assert (cfg.data.codec, cfg.data.codec_path) == ("vae", str(wan_dir / "vae"))
    assert (cfg.data.text_kind, cfg.data.text_path) == ("t5", str(wan_dir / "text_encoder"))
    arch = cfg.arch()
    assert arch.latent_channels == 4 and arch.text_features is None and arch.patch == (1, 2, 2)


def test_folder_without_text_encoder_uses_minilm_and_a_projection(wan_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(wan_dir, bare, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    cfg = TrainConfig.model_validate({"model": {"pretrained": str(bare)}, "data": {"frames": 5, "size": [16, 16]}})
    assert cfg.data.text_kind == "minilm" and cfg.arch().text_features == 384
    assert "text_features: 384" not in yaml.safe_dump(cfg.model_dump(mode="json"))  # derived, from data.text_kind


def test_bad_folders_exit_2_naming_file_and_key(wan_dir, tmp_path):
    runner = CliRunner()

    def train(folder):
        return runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                   "--pretrained", str(folder), "--dry-run"])

    missing = train(tmp_path / "nothing")
    assert missing.exit_code == 2 and "transformer/config.json is missing" in missing.output.replace("\n", "")
    other = tmp_path / "other"
    shutil.copytree(wan_dir, other)
    cfg = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps(cfg | {"_class_name": "FluxTransformer2DModel"}))
    wrong = train(other)
    assert wrong.exit_code == 2 and "_class_name" in wrong.output
    (other / "transformer" / "config.json").write_text(json.dumps(cfg | {"num_layers": 3}))
    short = train(other)
    assert short.exit_code == 2 and "blocks.2" in short.output.replace("\n", "")
    (other / "transformer" / "config.json").write_text(json.dumps(cfg))
    vae = json.loads((other / "vae" / "config.json").read_text())
    (other / "vae" / "config.json").write_text(json.dumps(vae | {"z_dim": 8}))
    mismatch = train(other)
    assert mismatch.exit_code == 2 and "z_dim" in mismatch.output
    assert not (tmp_path / "run").exists()                       # nothing written before the checks


@pytest.mark.slow
@pytest.mark.timeout(1500)          # includes building the session `curated` fixture when run alone
def test_tiny_wan_end_to_end(curated, wan_dir, tmp_path):
    """curate (fixture) -> lct train --pretrained (4 steps, 2 Ray workers, ZeRO-3) -> generate -> eval."""
    from diffusers import WanTransformer3DModel

    from model.export import load_bundle
    from training.metrics import read_metrics

    runner = CliRunner()
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"frames": 5, "size": [16, 16], "holdout": 1},
        "schedule": {"steps": 4, "checkpoint_every": 4, "sample_steps": 2},
    }))
    result = runner.invoke(app, ["train", "--data", str(curated), "--out", str(run), "--pretrained", str(wan_dir),
                                 "--config", str(config), "--workers", "2", "--zero", "3"])
    assert result.exit_code == 0, result.output
    losses = [m["loss"] for m in read_metrics(run)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)

    # the export: lct's bundle and a plain diffusers transformer with the tuned weights
    bundle = load_bundle(run)
    assert bundle.model.cfg.attention == "bidirectional" and bundle.codec.latent_channels == 4
    assert bundle.info["flow_shift"] == 3.0
    plain = WanTransformer3DModel.from_pretrained(run / "export" / "diffusers", subfolder="transformer")
    start = WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer")
    tuned = dict(plain.named_parameters())
    assert all(torch.equal(tuned[k], v) for k, v in bundle.model.native_state_dict().items())
    assert any(not torch.equal(tuned[k], p) for k, p in start.named_parameters())   # training moved weights

    scene = tmp_path / "scene.yaml"
    scene.write_text(yaml.safe_dump({
        "global": "Character 1: a red disc. Environment: a blue room.",
        "shots": [{"prompt": "Character 1 slides left", "frames": 5}, {"prompt": "wide shot", "frames": 5}],
        "steps": 2, "seed": 0,
    }))
    for mode in ("joint", "autoregressive"):
        out = tmp_path / f"gen-{mode}"
        gen = runner.invoke(app, ["generate", "--checkpoint", str(run), "--scene", str(scene), "--out", str(out),
                                  "--mode", mode])
        assert gen.exit_code == 0, gen.output
        assert len(list(out.glob("*.mp4"))) >= 2, sorted(p.name for p in out.iterdir())
        assert json.loads((out / "generation.json").read_text())["shift"] == 3.0   # Wan's flow shift, from scheduler/
    ev = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", str(curated), "--out", str(tmp_path / "eval"),
                             "--scenes", "1", "--steps", "2", "--modes", "joint", "--modes", "autoregressive"])
    assert ev.exit_code == 0, ev.output
    assert (tmp_path / "eval" / "eval.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tiny_wan_lora_trains_adapters_and_exports_merged_weights(curated, wan_dir, tmp_path):
    from diffusers import WanTransformer3DModel

    from training.launch import launch

    cfg = TrainConfig.model_validate({
        "data": {"dataset": str(curated), "frames": 5, "size": [16, 16], "holdout": 1},
        "model": {"pretrained": str(wan_dir), "lora_rank": 2, "lora_targets": ["to_q", "to_v"]},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "engine": {"workers": 2, "zero_stage": 2},
        "schedule": {"steps": 3, "checkpoint_every": 3, "sample_steps": 1},   # steps 1-2 run at warm-up lr 0
    })
    run = tmp_path / "run"
    result = launch(cfg, run)
    assert result.step == 3 and math.isfinite(result.loss)
    plain = WanTransformer3DModel.from_pretrained(run / "export" / "diffusers", subfolder="transformer")
    start = dict(WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer").named_parameters())
    changed = {n for n, p in plain.named_parameters() if not torch.equal(p, start[n])}
    assert changed and all(n.endswith(("attn1.to_q.weight", "attn1.to_v.weight", "attn2.to_q.weight",
                                       "attn2.to_v.weight")) for n in changed), sorted(changed)
