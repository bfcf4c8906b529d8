"""Ulysses SP=2 (2 gloo processes) == SP=1: outputs and gradients, odd token counts, both masks."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import PRESETS, Scene, Shot, collate
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
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
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
    finally:
        dist.destroy_process_group()


def Batch_like(batch, vid_values):
    """batch with vid_group replaced (used to shard a per-token index the same way)."""
    from dataclasses import replace
    return replace(batch, vid_group=vid_values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_sp2_equals_sp1(attention, tmp_path):
    path = str(tmp_path / "sp2.pt")
    # spawn, not fork: the test process may be a Ray driver with live threads (the session's curated
    # fixture), and a forked copy of it breaks both the children and the parent's Ray connection
    mp.start_processes(sp_worker, args=(2, free_port(), attention, path), nprocs=2, join=True,
                       start_method="spawn")
    got = torch.load(path, weights_only=True)
    out, grads = reference(attention)
    torch.testing.assert_close(got["out"], out, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m} (max |grad| {grad.abs().max():.3g})")


def test_heads_not_divisible_teaches():
    with pytest.raises(ValueError, match=r"does not divide the model's 4 attention heads.*\[1, 2, 4\]"):
        check_heads(4, 3)
