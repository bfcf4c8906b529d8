"""Ulysses sequence parallelism: each rank of an SP group holds L/P tokens of the same scene.

Around attention, an all-to-all turns sequence shards into head shards and back
(DeepSpeed-Ulysses): q, k, v (B, H, L/P, d) -> (B, H/P, L, d), shot-block attention
(model/attention.py) on the full sequence of H/P heads, then (B, H/P, L, d) -> (B, H, L/P, d).
Everything else in a block (adaLN, QKV, RoPE, MLP) is per token and runs on the shard unchanged.

    attention = UlyssesAttention(group)          # group: the SP process group (None = world)
    model.set_attention(attention)               # the model never imports torch.distributed
    local = shard_batch(batch, rank, P)          # this rank's text and video tokens
    out = model(local, t, packed=True)           # (B, Lv_pad / P, patch_dim) of this rank's tokens

Sharding: text and video are padded separately to multiples of P with group -1 tokens (never
seen as keys), and rank r keeps the r-th contiguous chunk of each. After the all-to-all the full
sequence is [txt_0; vid_0; txt_1; vid_1; ...], a permutation of [text; video]; attention is
permutation equivariant given each token's group (all-gathered once per forward in `plan`)
and RoPE is applied before, so the result equals the unsharded one.

In training (training/train.py, `engine.sequence_parallel: P`): `sp_group(P)` makes groups of P
consecutive ranks; the P ranks of a group read the same scenes and draw the same timesteps and
noise (DP rank = rank // P), each runs its shard, and `sharded_flow_loss` makes the loss and the
gradients those of the whole scene. ZeRO partitions over all ranks (DP x SP); DeepSpeed sees
every rank as data parallel, so its train_batch_size counts each scene P times.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from model.attention import AttentionPlan, BlockAttention, attend, plan_attention
from model.lct import Batch

from .objective import pack_targets, token_flow_loss


def check_world(world: int, degree: int) -> None:
    """SP groups are P consecutive ranks: P must divide the world size (teaching error otherwise)."""
    if degree < 1 or world % degree:
        raise ValueError(
            f"engine.sequence_parallel = {degree} does not divide the {world} training workers; every SP group "
            f"is {degree} consecutive ranks: set engine.workers (--workers) to a multiple of {degree}"
        )


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place: SP group (P consecutive ranks; None at P = 1), rank in it, and its DP rank."""

    group: object
    degree: int                      # P
    rank: int                        # rank within the SP group: which chunk of the tokens it holds
    dp_rank: int                     # rank // P: which scenes (data, timesteps, noise)
    dp_world: int                    # world // P: scenes per micro-step over the world


def sp_group(degree: int) -> SequenceParallel:
    """Build the SP groups (collective: every rank makes every group) and return this rank's place."""
    rank, world = dist.get_rank(), dist.get_world_size()
    check_world(world, degree)
    group = None
    if degree > 1:
        for first in range(0, world, degree):
            ranks = list(range(first, first + degree))
            made = dist.new_group(ranks)
            if rank in ranks:
                group = made
    return SequenceParallel(group, degree, rank % degree, rank // degree, world // degree)


def sharded_flow_loss(out: Tensor, targets: list[list[Tensor]], full: Batch, local: Batch, sp: SequenceParallel,
                      patch: tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The flow loss of a sharded scene: (loss to backward, the scene's loss, (B, S) per-shot losses).

    Each rank sums the squared errors of its own tokens (training.objective.token_flow_loss): the
    P shares add up to the SP=1 loss. DeepSpeed averages gradients over all DP x SP ranks, while the
    SP=1 gradient is the sum of the P ranks' shares, so each rank backpropagates P x its share.
    The logged losses are the shares all-reduced over the SP group (no gradient).
    """
    target = shard_tokens(pack_targets(targets, full.vid.shape[1], patch), sp.rank, sp.degree)
    numel = torch.zeros(full.shot_mask.shape, dtype=torch.float32)
    for b, shapes in enumerate(full.latent_shapes):
        numel[b, : len(shapes)] = torch.tensor([math.prod(s) for s in shapes], dtype=torch.float32)
    share, per_share = token_flow_loss(out, target, local.vid_group, full.shot_mask, numel)
    per_shot = per_share.detach().clone()
    dist.all_reduce(per_shot, group=sp.group)
    mask = full.shot_mask.to(per_shot.device, per_shot.dtype)
    return share * sp.degree, (per_shot * mask).sum() / mask.sum(), per_shot


@contextlib.contextmanager
def single_device_attention(module):
    """Run `module` on whole (unsharded) sequences for a while, e.g. to sample: plain BlockAttention."""
    processor = getattr(module, "attention", None)
    if processor is None or isinstance(processor, BlockAttention):
        yield module
        return
    module.set_attention(BlockAttention())
    try:
        yield module
    finally:
        module.set_attention(processor)


def check_heads(heads: int, degree: int) -> None:
    """Ulysses splits heads over the SP group: P must divide them (teaching error otherwise)."""
    if degree < 1 or heads % degree:
        divisors = [p for p in range(1, heads + 1) if heads % p == 0]
        raise ValueError(
            f"engine.sequence_parallel = {degree} does not divide the model's {heads} attention heads; "
            f"Ulysses gives each rank heads / P of them: use one of {divisors}"
        )


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 (P equal chunks); its gradient is the same exchange."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.contiguous()                                       # (empty_like keeps a permute's strides)
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def seq_to_heads(x: Tensor, group, P: int) -> Tensor:
    """(B, H, Ls, d) of this rank's tokens -> (B, H/P, P Ls, d) of all tokens, this rank's heads."""
    B, H, Ls, d = x.shape
    x = x.reshape(B, P, H // P, Ls, d).permute(1, 0, 2, 3, 4)   # (P, B, H/P, Ls, d): chunk p -> rank p
    x = _AllToAll.apply(x, group)                                # chunk p = rank p's tokens
    return x.permute(1, 2, 0, 3, 4).reshape(B, H // P, P * Ls, d)


def heads_to_seq(x: Tensor, group, P: int) -> Tensor:
    """Inverse of seq_to_heads: (B, H/P, P Ls, d) -> (B, H, Ls, d)."""
    B, Hp, L, d = x.shape
    x = x.reshape(B, Hp, P, L // P, d).permute(2, 0, 1, 3, 4)   # (P, B, H/P, Ls, d): chunk p -> rank p
    x = _AllToAll.apply(x, group)                                # chunk p = heads of rank p
    return x.permute(1, 0, 2, 3, 4).reshape(B, P * Hp, L // P, d)


class UlyssesAttention:
    """Attention processor (model/attention.py interface) for a rank holding L/P tokens."""

    def __init__(self, group=None):
        self.group = group
        self.degree = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def plan(self, group_ids: Tensor, mode: str) -> AttentionPlan:
        """group_ids (B, Ls) of this rank's tokens -> the plan of the gathered (B, P Ls) sequence."""
        parts = [torch.empty_like(group_ids) for _ in range(self.degree)]
        dist.all_gather(parts, group_ids.contiguous(), group=self.group)
        return plan_attention(torch.cat(parts, dim=1), mode)

    def shard(self, x: Tensor) -> Tensor:
        """(B, L, ...) per-token values of the whole sequence -> this rank's chunk (as shard_batch cuts)."""
        return shard_tokens(x, self.rank, self.degree)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan | None) -> Tensor:
        check_heads(q.shape[1], self.degree)
        P, g = self.degree, self.group
        out = attend(seq_to_heads(q, g, P), seq_to_heads(k, g, P), seq_to_heads(v, g, P), plan)
        return heads_to_seq(out, g, P)


def shard_slices(length: int, degree: int, rank: int) -> tuple[int, int]:
    """Padded length // degree tokens per rank: (start, end) of rank's chunk of the padded stream."""
    per = -(-length // degree)
    return rank * per, (rank + 1) * per


def shard_tokens(x: Tensor, rank: int, degree: int, value: float = 0) -> Tensor:
    """(B, L, ...) -> (B, ceil(L / P), ...): rank's chunk of x padded along dim 1 with `value`."""
    length = x.shape[1]
    start, end = shard_slices(length, degree, rank)
    padded = shard_slices(length, degree, degree - 1)[1]          # P x ceil(length / P)
    return F.pad(x, (0, 0) * (x.ndim - 2) + (0, padded - length), value=value)[:, start:end]


def shard_batch(batch: Batch, rank: int, degree: int, text: bool = True) -> Batch:
    """This rank's share of every scene: Lt/P text and Lv/P video tokens (padded with group -1).

    text=False keeps all text tokens on every rank: the Wan backbone only cross-attends to text
    (per video token), so its self-attention sequence is the video tokens alone.
    """
    Lt = batch.txt.shape[1]

    def chunk(x: Tensor, value: float) -> Tensor:
        return shard_tokens(x, rank, degree, value)

    def chunk_text(x: Tensor, value: float) -> Tensor:
        return chunk(x, value) if text else x

    return Batch(
        txt=chunk_text(batch.txt, 0), txt_group=chunk_text(batch.txt_group, -1),
        vid=chunk(batch.vid, 0), vid_group=chunk(batch.vid_group, -1),
        ids=torch.cat([chunk_text(batch.ids[:, :Lt], 0), chunk(batch.ids[:, Lt:], 0)], dim=1),
        pooled=batch.pooled, shot_mask=batch.shot_mask, latent_shapes=batch.latent_shapes,
    )
