"""Building blocks of the LCT MMDiT: embedders, adaLN-Zero modulation, the dual-stream block.

Every token is modulated by the conditioning vector of its own group (global prompt or shot).
Blocks receive one vector per group, c (B, G, D), plus the group index of every token, and
gather per token, so the modulation MLP runs G times per scene, not L times.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionPlan, attend
from .rope import apply_rope


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 like DiT/SD3): (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * freqs                 # (..., half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class MLPEmbedder(nn.Module):
    """in_dim -> D -> D with a SiLU in between (timestep and pooled-text embedders)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, width), nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


def gather_groups(per_group: Tensor, group: Tensor) -> Tensor:
    """Pick each token's row: per_group (B, G, K), group (B, L) in [0, G) -> (B, L, K)."""
    return per_group.gather(1, group[..., None].expand(-1, -1, per_group.shape[-1]))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class StreamWeights(nn.Module):
    """The per-stream half of an MMDiT block: adaLN, norms, QKV, QK-norm, out proj, MLP.

    pre_only: the stream only feeds keys and values to the attention and its own output is
    never used (the text stream of the last block, as in SD3), so it has no out proj and MLP.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        head_dim = width // heads
        self.heads, self.pre_only = heads, pre_only
        self.modulation = nn.Linear(width, (2 if pre_only else 6) * width)  # adaLN-Zero: zero-init
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        if pre_only:
            return
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def mods(self, c: Tensor, group: Tensor) -> list[Tensor]:
        """c (B, G, D), group (B, L) -> (B, L, D) each: shift1, scale1[, gate1, shift2, scale2, gate2]."""
        m = gather_groups(self.modulation(F.silu(c)), group)     # (B, L, 2D or 6D)
        return list(m.chunk(2 if self.pre_only else 6, dim=-1))

    def qkv_heads(self, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, D) -> q, k, v each (B, heads, L, head_dim), q and k normalised."""
        B, L, D = x.shape
        qkv = self.qkv(modulate(self.norm1(x), shift, scale))    # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x: Tensor, attn: Tensor, m: list[Tensor]) -> Tensor:
        """Residual updates after attention: attn (B, L, D) -> new x (B, L, D)."""
        if self.pre_only:
            return x
        x = x + m[2] * self.proj(attn)
        return x + m[5] * self.mlp(modulate(self.norm2(x), m[3], m[4]))


class MMDiTBlock(nn.Module):
    """SD3-style dual-stream block: separate weights for text and video, one joint attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, last: bool = False):
        super().__init__()
        self.txt = StreamWeights(width, heads, mlp_ratio, qk_norm, pre_only=last)
        self.vid = StreamWeights(width, heads, mlp_ratio, qk_norm)

    def forward(
        self,
        txt: Tensor,        # (B, Lt, D) text tokens
        vid: Tensor,        # (B, Lv, D) video tokens
        c: Tensor,          # (B, G, D) conditioning per group (G = 1 + S)
        txt_group: Tensor,  # (B, Lt) group of each text token (padding clamped to 0)
        vid_group: Tensor,  # (B, Lv)
        cos: Tensor,        # (B, Lt + Lv, head_dim // 2) RoPE of the joint sequence
        sin: Tensor,
        plan: AttentionPlan | None,  # the scene's mask blocks (model/attention.py); None = all see all
        past: tuple[Tensor, Tensor] | None = None,  # cached (k, v), each (B, heads, Lc, head_dim)
        attention: Callable[..., Tensor] = attend,  # (q, k, v, plan) -> (B, heads, L, head_dim)
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """-> new txt, new vid, and (k, v) of this call's tokens (after QK-norm and RoPE) for a KV-cache.

        past: keys/values of tokens computed earlier (the KV-cache of a context-causal scene);
        they are prepended to this call's keys, so the queries attend [past; text; video].
        attention: the model's attention processor (single-device `BlockAttention`, or training's
        sequence-parallel wrapper, which then sees this rank's shard of the tokens).
        """
        Lt = txt.shape[1]
        m_txt, m_vid = self.txt.mods(c, txt_group), self.vid.mods(c, vid_group)
        q_t, k_t, v_t = self.txt.qkv_heads(txt, m_txt[0], m_txt[1])
        q_v, k_v, v_v = self.vid.qkv_heads(vid, m_vid[0], m_vid[1])
        q = apply_rope(torch.cat([q_t, q_v], dim=2), cos, sin)   # (B, heads, L, head_dim)
        k = apply_rope(torch.cat([k_t, k_v], dim=2), cos, sin)
        v = torch.cat([v_t, v_v], dim=2)
        k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        attn = attention(q, k_all, v_all, plan)                  # (B, heads, L, head_dim)
        attn = attn.transpose(1, 2).flatten(2)                   # (B, L, D)
        txt, vid = self.txt.finish(txt, attn[:, :Lt], m_txt), self.vid.finish(vid, attn[:, Lt:], m_vid)
        return txt, vid, (k, v)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to patch features; zero-initialised so v starts at 0."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: Tensor, c: Tensor, group: Tensor) -> Tensor:
        shift, scale = gather_groups(self.modulation(F.silu(c)), group).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, Lv, patch_dim)
