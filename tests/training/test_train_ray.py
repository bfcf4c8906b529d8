"""`lct train` for real: Ray Train TorchTrainer with 2 CPU workers, DeepSpeed ZeRO over gloo,
on shards written by `lct curate` (the session fixture `curated`)."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from model import LCT
from model.export import load_bundle
from pipelines.cli import app
from tests._ray import free_port
from training.config import TrainConfig
from training.launch import launch
from training.metrics import read_metrics
from training.validation import validation_scene, write_samples

pytestmark = pytest.mark.slow


def config(curated, **sections) -> TrainConfig:
    base = {
        "data": {"dataset": str(curated), "frames": 4, "size": [16, 16], "holdout": 1},
        "model": {"preset": "lct-debug"},
        "engine": {"workers": 2, "zero_stage": 2},
        "schedule": {"steps": 6, "checkpoint_every": 3, "sample_steps": 2, "keep_checkpoints": 2},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainConfig.model_validate(base)


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run)}


@pytest.fixture(scope="module")
def straight(curated, tmp_path_factory) -> Path:
    """6 uninterrupted ZeRO-2 steps on 2 workers."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = launch(config(curated), run)
    assert result.step == 6 and math.isfinite(result.loss)
    return run


def test_zero2_run_trains_checkpoints_and_exports(straight):
    metrics = read_metrics(straight)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for m in metrics:
        assert math.isfinite(m["loss"]) and m["samples_per_s"] > 0 and 0 <= m["data_wait"] < 1
        assert m["peak_mem_mb"] > 0 and m["mfu"] > 0 and any(k.startswith("loss_t") for k in m)
    state = json.loads((straight / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 2 and set(state["data"]) == {"0", "1"}
    assert sorted(p.name for p in (straight / "checkpoints").glob("step-*")) == ["step-000003", "step-000006"]
    assert json.loads((straight / "deepspeed.json").read_text())["train_batch_size"] == 2
    assert list((straight / "tb").glob("events.*"))
    sample = straight / "samples" / "step-000006"
    assert (sample / "sheet.png").is_file() and list(sample.glob("shot-*.mp4"))
    bundle = load_bundle(straight)
    assert bundle.frames == 4 and bundle.size == (16, 16) and bundle.info["step"] == 6


def test_resume_equals_uninterrupted(curated, straight, tmp_path):
    run = tmp_path / "run"
    first = launch(config(curated), run, until=3)
    assert first.step == 3 and not (run / "checkpoints" / "step-000006").exists()
    second = launch(config(curated), run)
    assert second.step == 6
    a, b = losses(straight), losses(run)
    assert set(a) == set(b) == set(range(1, 7))
    for step in range(1, 7):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # the universal checkpoint: the same run continues on 1 worker (different world size)
    third = launch(config(curated, engine={"workers": 1}, schedule={"steps": 8}), run)
    assert third.step == 8 and math.isfinite(third.loss)
    assert (run / "checkpoints" / "step-000006" / "ds_universal").is_dir()
    assert json.loads((run / "checkpoints" / "step-000008" / "state.json").read_text())["world_size"] == 1


def test_a_truncated_newest_state_json_resumes_from_the_previous_checkpoint(straight, tmp_path):
    """Damage step 6 of a finished run: re-running passes it over (and says so), resumes at step 3 and
    retrains steps 4-6 to the uninterrupted losses; with every checkpoint damaged `lct train` exits 2."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    state = run / "checkpoints" / "step-000006" / "state.json"
    state.write_text(state.read_text()[:100])
    said = []
    result = launch(TrainConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text())), run,
                    on_status=said.append)
    assert result.step == 6
    told = "\n".join(said)
    assert "step-000006 passed over" in told and "not valid JSON" in told and "resuming from step-000003" in told
    assert (run / "checkpoints" / "damaged" / "step-000006").is_dir()      # kept for a look, never loaded
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6]                     # resumed at 3, not 0, not 6
    a, b = losses(straight), losses(run)
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])

    for checkpoint in (run / "checkpoints").glob("step-*"):
        (checkpoint / "state.json").write_text("{")
    refused = CliRunner().invoke(app, ["train", "--out", str(run)])
    assert refused.exit_code == 2, refused.output
    assert "no checkpoint" in flat(refused.output) and "can be resumed from" in flat(refused.output)
    assert "move" in flat(refused.output) and "aside" in flat(refused.output)


def test_zero3_export_loads_without_deepspeed_and_matches(curated, tmp_path):
    run = tmp_path / "z3"
    result = launch(config(curated, engine={"zero_stage": 3}, schedule={"steps": 3, "checkpoint_every": 3}), run)
    assert result.step == 3 and math.isfinite(result.loss)
    bundle = load_bundle(run)
    assert isinstance(bundle.model, LCT) and "deepspeed" not in type(bundle.model).__module__
    assert any(p.abs().sum() > 0 for p in bundle.model.final.linear.parameters())   # trained, not zero-init
    # the exported model regenerates the validation sample the ZeRO-3 engine wrote at step 3
    cfg = config(curated)
    scene = validation_scene(curated, cfg.data, cfg.window_shots, cfg.data.holdout)
    again = write_samples(bundle.model, scene, bundle.text, bundle.codec, tmp_path / "again", 2, 8.0, seed=0)
    engine_latents = load_file(str(run / "samples" / "step-000003" / "latents.safetensors"))
    export_latents = load_file(str(again / "latents.safetensors"))
    assert engine_latents.keys() == export_latents.keys()
    for key in engine_latents:
        assert torch.allclose(engine_latents[key], export_latents[key], atol=1e-4), key


def _train_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_restarts_from_the_last_checkpoint(curated, tmp_path):
    run = tmp_path / "killed"
    cfg = config(curated, schedule={"steps": 8, "checkpoint_every": 2})
    killed = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"   # Ray registered step 2
            if snapshot.is_file() and "step-000002" in snapshot.read_text() and any(m["step"] >= 3 for m in read_metrics(run)):
                workers = _train_workers()
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = launch(cfg, run)
    thread.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert result.step == 8 and math.isfinite(result.loss)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert 2 <= steps[restart] - 1 <= steps[restart - 1], steps     # resumed from a checkpoint, not from 0
    assert (run / "export" / "model.safetensors").is_file()


def test_cli_train_dry_run_and_errors(curated, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(app, ["train", "--data", str(curated), "--out", str(out), "--preset", "lct-debug", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert TrainConfig.model_validate(__import__("yaml").safe_load((out / "config.yaml").read_text())).model.preset == "lct-debug"
    bad = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "does not exist" in flat(bad.output)
    changed = runner.invoke(app, ["train", "--out", str(out), "--preset", "lct-small", "--dry-run"])
    assert changed.exit_code == 2 and "different ['model'] config" in flat(changed.output)
    nothing = runner.invoke(app, ["train", "--out", str(out), "--export-only"])
    assert nothing.exit_code == 2 and "no checkpoint" in flat(nothing.output)


def flat(text: str) -> str:
    """CLI output without rich's line wrapping."""
    return " ".join(text.split())


def test_plain_torchrun_launcher_overfits_one_scene(curated, tmp_path):
    """The Slurm path (torchrun, no Ray): one scene, 40 steps; its loss at fixed noise falls by > 2x."""
    import shutil
    import tarfile

    one = tmp_path / "one"
    (one / "shards").mkdir(parents=True)
    shutil.copytree(curated / "manifest", one / "manifest")
    src = sorted((curated / "shards").glob("*.tar"))[0]
    with tarfile.open(src) as tar, tarfile.open(one / "shards" / "scenes-000000.tar", "w") as out:
        first = tar.getmembers()[0].name.split(".")[0]
        for m in tar.getmembers():
            if m.name.split(".")[0] == first:
                out.addfile(m, tar.extractfile(m))
    cfg = config(
        one, data={"dataset": str(one), "holdout": 0}, engine={"workers": 1},
        recipe={"image_prob": 0.0, "single_shot_prob": 0.0, "text_dropout": 0.0},
        optim={"lr": 2e-3, "warmup_steps": 5}, schedule={"steps": 40, "checkpoint_every": 40, "sample_steps": 2},
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(__import__("training.config", fromlist=["dump_yaml"]).dump_yaml(cfg))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "1", "--master-port", str(free_port()),
                           "-m", "training.train", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "step-000040" / "state.json").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))

    from model import sample as _unused  # noqa: F401  (model imports without DeepSpeed)
    from training.data import SceneStream, encode, prepare
    from training.objective import add_noise, flow_loss
    from model import collate, Scene, Shot
    from training.validation import PLAIN

    bundle = load_bundle(run)
    raw = next(s for _, _, s in SceneStream(one, shuffle_buffer=1).from_position())
    scene = encode(prepare(raw, cfg.data, PLAIN, cfg.window_shots, 0), bundle.text, bundle.codec).scene
    gen = torch.Generator().manual_seed(0)
    t = torch.full((1, len(scene.shots)), 0.5)
    noisy, targets = add_noise([[s.latent for s in scene.shots]], t, gen)
    batch = collate([Scene(scene.global_text, [Shot(s.text, z) for s, z in zip(scene.shots, noisy[0])])], bundle.model.cfg)
    with torch.no_grad():
        trained, _ = flow_loss(bundle.model(batch, t), targets, batch.shot_mask)
        untrained, _ = flow_loss(LCT(bundle.model.cfg)(batch, t), targets, batch.shot_mask)
    assert trained < 0.5 * untrained, (float(trained), float(untrained))


def test_cli_train_resolves_relative_paths(curated, tmp_path, monkeypatch):
    """`lct train --data REL --out REL` from another folder: the run records absolute paths (Ray workers run elsewhere)."""
    monkeypatch.chdir(curated.parent)
    result = CliRunner().invoke(app, ["train", "--data", curated.name, "--out", "run-rel", "--preset", "lct-debug", "--dry-run"])
    assert result.exit_code == 0, result.output
    saved = __import__("yaml").safe_load((curated.parent / "run-rel" / "config.yaml").read_text())
    assert saved["data"]["dataset"] == str(curated.resolve())
