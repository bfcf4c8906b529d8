"""Ulysses SP=2 (2 gloo processes) == SP=1: outputs and gradients, odd token counts, both masks."""

import os

import pytest
import torch
import torch.distributed as dist

from model import PRESETS, Scene, Shot, collate
from tests._gloo import free_port, spawn
from tests.model.test_attention import make_model   # the same perturbed lct-debug model
from training.sequence_parallel import UlyssesAttention, check_heads, shard_batch

CFG = PRESETS["lct-debug"]                    # 4 heads: P = 2 gives each rank 2


def make_batch():
    """Two scenes (padding between them); per scene odd text and video token counts."""
    g = torch.Generator().manual_seed(3)
    C, D = CFG.latent_channels, CFG.text_dim
    def scene(grids, global_len, text_len):
        return Scene(torch.randn(global_len, D, generator=g),
                     [Shot(torch.randn(text_len + i, D, generator=g), torch.randn(C, *grid, generator=g))
                      for i, grid in enumerate(grids)])
    scenes = [scene([(1, 2, 6), (3, 2, 2), (1, 6, 2)], 4, 2), scene([(1, 2, 2)], 5, 4)]
    batch = collate(scenes, CFG)
    assert batch.txt.shape[1] % 2 and batch.vid.shape[1] % 2   # odd Lt (13) and Lv (9)
    return batch, torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]])


def weights(n: int, tokens: int) -> torch.Tensor:
    """Loss weights of a per-token mean (the training loss's scale), so gradients are O(1)."""
    return torch.linspace(-1, 1, n) / tokens


def reference(attention: str):
    """SP=1: real video-token outputs and gradients of sum(w * out) over real tokens."""
    model, (batch, t) = make_model(attention), make_batch()
    out = model(batch, t, packed=True)[batch.vid_group >= 0]     # (N real, patch_dim)
    (out * weights(out.numel(), out.shape[0]).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


def sp_worker(rank: int, world: int, port: int, attention: str, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)   # tests._gloo.spawn closes it
    model, (batch, t) = make_model(attention), make_batch()
    model.set_attention(UlyssesAttention())
    local = shard_batch(batch, rank, world)
    out = model(local, t, packed=True)                          # (B, ceil(Lv / P), patch_dim)
    parts = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(parts, out.detach())
    Lv = batch.vid.shape[1]
    full = torch.cat(parts, dim=1)[:, :Lv]                      # (B, Lv, patch_dim) unsharded
    # The same loss as the reference, each rank summing its own real tokens.
    real = local.vid_group >= 0
    index = torch.cumsum((batch.vid_group >= 0).flatten(), 0).view(batch.vid_group.shape) - 1
    local_index = shard_batch(Batch_like(batch, index), rank, world).vid_group[real]
    N = int((batch.vid_group >= 0).sum())
    w = weights(N * out.shape[-1], N).view(N, out.shape[-1])
    (out[real] * w[local_index]).sum().backward()
    for p in model.parameters():                                # gradient = sum over the SP group
        dist.all_reduce(p.grad)
    if rank == 0:
        torch.save({"out": full[batch.vid_group >= 0],
                    "grads": {n: p.grad for n, p in model.named_parameters()}}, path)


def Batch_like(batch, vid_values):
    """batch with vid_group replaced (used to shard a per-token index the same way)."""
    from dataclasses import replace
    return replace(batch, vid_group=vid_values)


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_sp2_equals_sp1(attention, tmp_path):
    path = str(tmp_path / "sp2.pt")
    # spawn, not fork: the test process may be a Ray driver with live threads (the session's curated
    # fixture), and a forked copy of it breaks both the children and the parent's Ray connection
    spawn(sp_worker, (2, free_port(), attention, path))
    got = torch.load(path, weights_only=True)
    out, grads = reference(attention)
    torch.testing.assert_close(got["out"], out, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m} (max |grad| {grad.abs().max():.3g})")


# -- the Wan backbone: the same hook (set_attention), video tokens sharded, text on every rank ----
def wan_model(folder: str, attention: str):
    from diffusers import WanTransformer3DModel

    from model.wan import load_wan_transformer

    model = load_wan_transformer(folder, attention=attention, text_len=6)
    torch.manual_seed(1)                                      # random non-zero weights everywhere
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert isinstance(model, WanTransformer3DModel)
    return model


def wan_batch(model):
    g = torch.Generator().manual_seed(3)
    C, D = model.cfg.latent_channels, model.cfg.text_dim
    def scene(grids, global_len, text_len):
        return Scene(torch.randn(global_len, D, generator=g),
                     [Shot(torch.randn(text_len + i, D, generator=g), torch.randn(C, *grid, generator=g))
                      for i, grid in enumerate(grids)])
    batch = collate([scene([(1, 2, 6), (3, 2, 2), (1, 6, 2)], 2, 2), scene([(1, 2, 2)], 3, 1)], model.cfg)
    assert batch.vid.shape[1] % 2                             # Lv = 9: a padded token on rank 1
    return batch, torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]])


def wan_weights(batch) -> torch.Tensor:
    """(B, Lv, patch_dim) loss weights, zero at padding, O(1) gradients."""
    B, Lv = batch.vid_group.shape
    w = torch.randn(B, Lv, batch.vid.shape[2], generator=torch.Generator().manual_seed(5))
    return w * (batch.vid_group >= 0)[..., None] / Lv


def wan_sp_worker(rank: int, world: int, port: int, folder: str, attention: str, path: str) -> None:
    from training.sequence_parallel import shard_tokens

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)   # tests._gloo.spawn closes it
    model = wan_model(folder, attention)
    batch, t = wan_batch(model)
    model.set_attention(UlyssesAttention())
    local = shard_batch(batch, rank, world, text=False)
    out = model(local, t, packed=True)                    # (B, ceil(Lv / P), patch_dim)
    (out * shard_tokens(wan_weights(batch), rank, world)).sum().backward()
    parts = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(parts, out.detach())
    for p in model.parameters():
        dist.all_reduce(p.grad)
    if rank == 0:
        torch.save({"out": torch.cat(parts, dim=1)[:, : batch.vid.shape[1]],
                    "grads": {n: p.grad for n, p in model.named_parameters()}}, path)


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_wan_sp2_equals_sp1(attention, tmp_path):
    from examples.make_tiny_wan import make_tiny_wan

    folder = str(make_tiny_wan(tmp_path / "wan", seed=0, text_encoder=False))
    path = str(tmp_path / "sp2.pt")
    spawn(wan_sp_worker, (2, free_port(), folder, attention, path))
    got = torch.load(path, weights_only=True)
    model = wan_model(folder, attention)                      # SP = 1: Wan's own processor, dense mask
    batch, t = wan_batch(model)
    out = model(batch, t, packed=True)
    (out * wan_weights(batch)).sum().backward()
    real = batch.vid_group >= 0
    assert out[real].abs().mean() > 1e-2
    torch.testing.assert_close(got["out"][real], out.detach()[real], atol=1e-5, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_heads_not_divisible_teaches():
    with pytest.raises(ValueError, match=r"does not divide the model's 4 attention heads.*\[1, 2, 4\]"):
        check_heads(4, 3)


@pytest.mark.parametrize("flags, message", [
    (["--workers", "4", "--sp", "3"], "does not divide the model's 4 attention heads"),
    (["--workers", "3", "--sp", "2"], "does not divide the 3 training workers"),
])
def test_cli_sp_errors_exit_2_before_any_worker(flags, message, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--preset", "lct-debug", *flags])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run" / "config.yaml").exists()


# -- training: `engine.sequence_parallel` through the plain torchrun launcher --------------------
def torchrun(run, nproc: int, cfg) -> None:
    """RUN/config.yaml <- cfg, then `torchrun -m training.train RUN` with nproc gloo workers."""
    import subprocess
    import sys
    from pathlib import Path

    from training.config import dump_yaml

    (run / "config.yaml").write_text(dump_yaml(cfg))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(launcher), "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                           "-m", "training.train", str(run)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def sp_config(curated, sp: int):
    from training.config import TrainConfig

    return TrainConfig.model_validate({
        "data": {"dataset": str(curated), "frames": 2, "size": [16, 16]},
        "model": {"preset": "lct-debug"},            # 4 heads: 2 per rank at P = 2
        "engine": {"workers": sp, "zero_stage": 2, "sequence_parallel": sp},
        # large steps so the losses follow the gradients; the warm-up gives updates 1 and 2 lr 0, so
        # updates 3-5 shape the losses of steps 4-6
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "schedule": {"steps": 6, "checkpoint_every": 3, "sample_steps": 1},
    })


@pytest.mark.slow
@pytest.mark.timeout(1500)          # 5 torchrun launches; includes building the session `curated` fixture when run alone
def test_sp2_training_equals_sp1_and_resumes_across_degrees(curated, tmp_path):
    """6 steps at SP=2 (2 workers, one DP group) == 6 steps at SP=1 on 1 worker: the same scenes,
    timesteps and noise, so equal losses and gradient norms mean the sharded loss and the gradient
    scaling are right (steps 4-6 train on the weights the earlier gradients made). Then the step-3
    checkpoint of each run resumes at the other degree (universal checkpoint) and steps 4-6 equal
    the SP=1 run's."""
    import json
    import shutil

    from training.metrics import read_metrics

    sp1, sp2 = tmp_path / "sp1", tmp_path / "sp2"
    sp1.mkdir(), sp2.mkdir()
    torchrun(sp1, 1, sp_config(curated, 1))
    torchrun(sp2, 2, sp_config(curated, 2))
    a, b = read_metrics(sp1), read_metrics(sp2)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    print("SP=1 losses", [m["loss"] for m in a], "\nSP=2 losses", [m["loss"] for m in b])
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (x["step"], x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * max(1.0, x["grad_norm"]), (x["step"], x["grad_norm"], y["grad_norm"])
        assert x["samples_per_s"] > 0 and y["samples_per_s"] > 0
    assert a[-1]["loss"] != a[2]["loss"]                         # the weights moved
    state = json.loads((sp2 / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["sequence_parallel"] == 2 and state["world_size"] == 2 and set(state["data"]) == {"0"}

    # the step-3 checkpoint of each run resumed at the other degree: SP=2 -> SP=1 (2 -> 1 workers)
    # and SP=1 -> SP=2 (1 -> 2 workers), both through the universal checkpoint
    for source, sp, nproc in ((sp2, 1, 1), (sp1, 2, 2)):
        resumed = tmp_path / f"{source.name}-at-sp{sp}"
        shutil.copytree(source, resumed)
        shutil.rmtree(resumed / "checkpoints" / "step-000006")
        (resumed / "metrics.jsonl").unlink()
        torchrun(resumed, nproc, sp_config(curated, sp))
        assert (resumed / "checkpoints" / "step-000003" / "ds_universal").is_dir()
        c = {m["step"]: m["loss"] for m in read_metrics(resumed)}
        print(f"{source.name} step 3 resumed at SP={sp}:", c)
        assert set(c) == {4, 5, 6}
        for step in (4, 5, 6):
            assert abs(c[step] - a[step - 1]["loss"]) <= 1e-5, (source.name, step, c[step], a[step - 1]["loss"])
