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


# -- resume, universal resume and the context-causal fine-tune of a Wan run ----------------------------
def wan_config(curated, wan_dir, **sections) -> TrainConfig:
    base = {
        "data": {"dataset": str(curated), "frames": 5, "size": [16, 16], "holdout": 1},
        "model": {"pretrained": str(wan_dir)},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "engine": {"workers": 2, "zero_stage": 2},
        "schedule": {"steps": 6, "checkpoint_every": 3, "sample_steps": 1, "keep_checkpoints": 2},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainConfig.model_validate(base)


def exported(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "export" / "model.safetensors"))


@pytest.fixture(scope="module")
def wan_straight(curated, wan_dir, tmp_path_factory):
    """6 uninterrupted full fine-tune steps of the tiny Wan, ZeRO-2 on 2 workers."""
    from training.launch import launch

    run = tmp_path_factory.mktemp("wan-straight") / "run"
    assert launch(wan_config(curated, wan_dir), run).step == 6
    return run


def interrupted_after_step_3(straight, run) -> None:
    """RUN as a run of wan_config stopped after its step-3 checkpoint leaves it: the uninterrupted run's folder
    without step 6, Ray Train's snapshot listing step 3 as its latest, no metrics or export. (The native
    backbone's resume test stops a run with `until`; here that run's own Ray Train start is saved.)"""
    shutil.copytree(straight, run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    shutil.rmtree(run / "export")
    (run / "metrics.jsonl").unlink()
    snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
    listed = json.loads(snapshot.read_text())
    kept = [r for r in listed["checkpoint_results"] if r["checkpoint_dir_name"] == "step-000003"]
    assert len(kept) == 1, listed
    snapshot.write_text(json.dumps(listed | {"checkpoint_results": kept, "checkpoint_report_indices": [0],
                                             "latest_checkpoint_result": kept[0]}))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_wan_resume_equals_uninterrupted_and_continues_on_another_world_size(curated, wan_dir, wan_straight, tmp_path):
    from diffusers import WanTransformer3DModel

    from training.launch import launch
    from training.metrics import read_metrics

    run = tmp_path / "run"
    interrupted_after_step_3(wan_straight, run)
    assert launch(wan_config(curated, wan_dir), run).step == 6
    assert [m["step"] for m in read_metrics(run)] == [4, 5, 6]                    # from the step-3 checkpoint
    straight, resumed = exported(wan_straight), exported(run)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0, msg=key)
    base = dict(WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer").named_parameters())
    assert any(not torch.allclose(straight[k], p, atol=1e-6) for k, p in base.items())    # steps 4-6 moved weights
    # universal checkpoint: the same run goes on with 1 worker
    third = launch(wan_config(curated, wan_dir, engine={"workers": 1}, schedule={"steps": 7}), run)
    assert third.step == 7 and math.isfinite(third.loss)
    assert (run / "checkpoints" / "step-000006" / "ds_universal").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_wan_context_causal_fine_tune_starts_from_the_run(curated, wan_dir, wan_straight, tmp_path):
    """`lct train --init-from WAN_RUN --attention context_causal` (the base folder comes from the run): the
    model starts at the run's weights, trains, exports context_causal, and generates with the KV-cache."""
    from model.export import load_bundle
    from training.engine import build_model
    from training.generate import generate, load_scene, plan_scene

    run = tmp_path / "causal"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"frames": 5, "size": [16, 16], "holdout": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "schedule": {"steps": 3, "checkpoint_every": 3, "sample_steps": 1},     # steps 1-2 run at warm-up lr 0
    }))
    result = CliRunner().invoke(app, ["train", "--data", str(curated), "--out", str(run), "--init-from", str(wan_straight),
                                      "--attention", "context_causal", "--config", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.attention) == ("wan", str(wan_dir), "context_causal")
    start, source = build_model(cfg).state_dict(), exported(wan_straight)      # what the workers start from
    assert start.keys() == source.keys() and all(torch.equal(start[k], v) for k, v in source.items())
    tuned = exported(run)
    assert any(not torch.equal(tuned[k], v) for k, v in source.items())          # and it trained
    assert json.loads((run / "export" / "config.json").read_text())["attention"] == "context_causal"

    bundle = load_bundle(run)
    scene = tmp_path / "scene.yaml"
    scene.write_text(yaml.safe_dump({"global": "Character 1: a red disc.", "steps": 1, "shots": [
        {"prompt": "Character 1 slides left", "frames": 5}, {"prompt": "wide shot", "frames": 5},
        {"prompt": "close-up", "frames": 5}]}))
    record = generate(bundle, plan_scene(load_scene(scene), bundle, "autoregressive")).record
    assert [s["kv_cache"] for s in record["shots"]] == ["rebuilt", "reused", "reused"]
    assert record["model"]["attention"] == "context_causal"

    # another base (here: no umT5, so a MiniLM projection) does not fit the run's weights: exit 2, no worker
    bare = tmp_path / "bare"
    shutil.copytree(wan_dir, bare, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    other = CliRunner().invoke(app, ["train", "--data", str(curated), "--out", str(tmp_path / "other"), "--init-from",
                                     str(wan_straight), "--pretrained", str(bare), "--config", str(config), "--dry-run"])
    said = " ".join(other.output.split())                                     # rich wraps long lines
    assert other.exit_code == 2 and "'text_features': (None, 384)" in said and "another architecture" in said, said


def test_cli_lora_in_the_config_file_with_pretrained_as_a_flag(wan_dir, tmp_path):
    """README's LoRA recipe: `lct train --pretrained DIR --config lora.yaml` (the file alone is not a Wan config;
    it was validated alone before the flags and refused: 'the native lct-mmdit trains from scratch')."""
    from pipelines.cli import _load_config

    lora = tmp_path / "lora.yaml"
    lora.write_text("model: {lora_rank: 16, lora_alpha: 16}\n")
    cfg = _load_config(TrainConfig, lora, {"model.pretrained": str(wan_dir), "data.dataset": str(tmp_path)})
    assert (cfg.model.backbone, cfg.model.lora_rank, cfg.model.lora_alpha) == ("wan", 16, 16.0)
    assert cfg.data.codec == "vae" and cfg.data.text_kind == "t5"              # the folder's parts still come along
