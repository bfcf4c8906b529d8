"""Shot-block attention: the scene's masks without an L x L tensor.

The joint sequence of a scene is made of groups (0 = global prompt, i = shot i, -1 = padding),
and both masks of LCT are unions of whole group blocks:

    bidirectional   a real token sees every real token of its scene
    context_causal  a token of group g sees groups 0..g (the global prompt, earlier shots, itself)
    padding         padding keys are never seen; a padding query sees only itself (its output = its v;
                    nothing reads it, and padding never reaches a real token)

So instead of a (B, 1, L, L) boolean mask (33 GB at 182K tokens, and it rules out flash
kernels) the sequence is sorted by group once per forward (`plan`), and attention runs as one
unmasked SDPA per group: the queries of group g against the sorted prefix of keys up to the end
of group g (context_causal), or all real keys (bidirectional). Memory is O(L) with a flash /
memory-efficient kernel, and the masked blocks are skipped, not computed and thrown away.
FlexAttention block masks express the same thing, but in torch 2.14 on CPU its eager path
materialises the full score matrix and a compiled one takes ~30 s per sequence length.

Usage (what every backbone does; `model/lct.py` and `model/wan.py` route attention here):

    attention = BlockAttention()                 # or training's Ulysses wrapper, same interface
    plan = attention.plan(group, mode)           # group (B, L) of the joint sequence, once per forward
    out = attention(q, k, v, plan)               # q, k, v (B, heads, L, head_dim) -> same shape
    mine = attention.shard(x)                    # (B, L, ...) per-token values -> the tokens held here

An attention processor is any object with these three methods (`shard` is the identity on one
device; a backbone that builds per-token values from the whole scene, like Wan's RoPE, calls it).
`training/sequence_parallel.py` provides one that holds L/P tokens per rank and all-to-alls
around this one; `model/` itself never imports torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("bidirectional", "context_causal")


@dataclass(frozen=True)
class ScenePlan:
    """One scene of the batch, its tokens sorted by group (padding last)."""

    order: Tensor                    # (L,) long: sorted position -> sequence position
    inverse: Tensor                  # (L,) long: sequence position -> sorted position
    ends: tuple[int, ...]            # end (exclusive) in sorted order of each group 0..G-1 present
    real: int                        # real tokens; sorted positions >= real are padding


@dataclass(frozen=True)
class AttentionPlan:
    """Where the blocks of the mask are, computed once per forward from the group ids."""

    mode: str
    length: int                      # L, the joint sequence the plan is for
    scenes: tuple[ScenePlan, ...] | None  # None: every token sees every token (one plain SDPA)


def plan_attention(group: Tensor, mode: str) -> AttentionPlan:
    """group (B, L) long of the joint sequence, -1 = padding -> the plan `attend` follows."""
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; use 'bidirectional' or 'context_causal'")
    B, L = group.shape
    if mode == "bidirectional" and bool((group >= 0).all()):
        return AttentionPlan(mode, L, None)
    scenes = []
    big = torch.iinfo(group.dtype).max
    for b in range(B):
        key = torch.where(group[b] >= 0, group[b], big)           # padding sorts last
        order = torch.argsort(key, stable=True)                  # (L,)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(L, device=group.device)
        counts = torch.bincount(group[b][group[b] >= 0])          # (G,) tokens per group
        ends = tuple(int(e) for e in counts.cumsum(0).tolist())
        scenes.append(ScenePlan(order, inverse, ends, ends[-1] if ends else 0))
    return AttentionPlan(mode, L, tuple(scenes))


def attend(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan | None) -> Tensor:
    """q (B, heads, L, head_dim), k, v (B, heads, Lk, head_dim) -> (B, heads, L, head_dim).

    plan None (or a plan without scenes): every query sees every key (the KV-cache path, where
    a group attends [its history; itself], and unpadded bidirectional scenes).
    """
    if plan is None or plan.scenes is None:
        return F.scaled_dot_product_attention(q, k, v)
    if q.shape[2] != plan.length or k.shape[2] != plan.length:
        raise ValueError(f"the plan is for {plan.length} tokens, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    return torch.cat([_scene(q[b : b + 1], k[b : b + 1], v[b : b + 1], s, plan.mode)
                      for b, s in enumerate(plan.scenes)])


def _scene(q: Tensor, k: Tensor, v: Tensor, s: ScenePlan, mode: str) -> Tensor:
    """One scene (1, heads, L, head_dim): sort by group, one SDPA per group block, unsort."""
    q, k, v = (x.index_select(2, s.order) for x in (q, k, v))   # (1, heads, L, head_dim) sorted
    if mode == "bidirectional":
        parts = [F.scaled_dot_product_attention(q[:, :, : s.real], k[:, :, : s.real], v[:, :, : s.real])]
    else:                                                        # context_causal: prefix per group
        starts = (0,) + s.ends[:-1]
        parts = [F.scaled_dot_product_attention(q[:, :, a:e], k[:, :, :e], v[:, :, :e])
                 for a, e in zip(starts, s.ends) if e > a]
    parts.append(v[:, :, s.real :])                              # padding queries see only themselves
    return torch.cat(parts, dim=2).index_select(2, s.inverse)    # back to sequence order


def dense_mask(group: Tensor, mode: str) -> Tensor:
    """group (B, L) -> (B, 1, L, L) bool, True = query may attend key: the masks above, dense.

    Not used by the native model (it is L x L). Kept for model/wan.py, whose diffusers attention
    processors take an `attn_mask`; route Wan through `attend` too to drop it there.
    """
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; use 'bidirectional' or 'context_causal'")
    q, k = group[:, :, None], group[:, None, :]                 # (B, L, 1), (B, 1, L)
    allowed = k >= 0
    if mode == "context_causal":
        allowed = allowed & (k <= q)
    eye = torch.eye(group.shape[1], dtype=torch.bool, device=group.device)
    return (allowed | eye)[:, None]


class BlockAttention:
    """The single-device attention processor: `plan` once per forward, then call per block."""

    def plan(self, group: Tensor, mode: str) -> AttentionPlan:
        return plan_attention(group, mode)

    def shard(self, x: Tensor) -> Tensor:
        """(B, L, ...) per-token values of the whole sequence -> those of the tokens this device holds: all."""
        return x

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan | None) -> Tensor:
        return attend(q, k, v, plan)
