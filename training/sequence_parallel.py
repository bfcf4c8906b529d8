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
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from model.attention import AttentionPlan, attend, plan_attention
from model.lct import Batch


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

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan | None) -> Tensor:
        check_heads(q.shape[1], self.degree)
        P, g = self.degree, self.group
        out = attend(seq_to_heads(q, g, P), seq_to_heads(k, g, P), seq_to_heads(v, g, P), plan)
        return heads_to_seq(out, g, P)


def shard_slices(length: int, degree: int, rank: int) -> tuple[int, int]:
    """Padded length // degree tokens per rank: (start, end) of rank's chunk of the padded stream."""
    per = -(-length // degree)
    return rank * per, (rank + 1) * per


def shard_batch(batch: Batch, rank: int, degree: int) -> Batch:
    """This rank's share of every scene: Lt/P text and Lv/P video tokens (padded with group -1)."""
    Lt, Lv = batch.txt.shape[1], batch.vid.shape[1]

    def chunk(x: Tensor, length: int, value: float) -> Tensor:   # pad dim 1 to P chunks, take ours
        start, end = shard_slices(length, degree, rank)
        padded = shard_slices(length, degree, degree - 1)[1]      # P x ceil(length / P)
        return F.pad(x, (0, 0) * (x.ndim - 2) + (0, padded - length), value=value)[:, start:end]

    return Batch(
        txt=chunk(batch.txt, Lt, 0), txt_group=chunk(batch.txt_group, Lt, -1),
        vid=chunk(batch.vid, Lv, 0), vid_group=chunk(batch.vid_group, Lv, -1),
        ids=torch.cat([chunk(batch.ids[:, :Lt], Lt, 0), chunk(batch.ids[:, Lt:], Lv, 0)], dim=1),
        pooled=batch.pooled, shot_mask=batch.shot_mask, latent_shapes=batch.latent_shapes,
    )
