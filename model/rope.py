"""Interleaved 3D RoPE: the position ids of a scene and their application to q and k.

`scene_position_ids` is the one place the LCT layout rule lives (DESIGN.md, "The method"):

    text token k of group i        -> (s_i + k,       s_i + k,       s_i + k)
    video token (f, y, x) of group i -> (s_i + L_i + f, s_i + L_i + y, s_i + L_i + x)
    s_0 = 0,  s_{i+1} = 1 + the largest coordinate used by group i

where group 0 is the global prompt (text only) and groups 1..S are the shots, L_i is the
number of text tokens of group i and (f, y, x) index the *patch* grid of its latent.
The model never invents positions: it only embeds the ids built here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scene_position_ids(
    text_lens: list[int], grids: list[tuple[int, int, int] | None]
) -> Tensor:
    """(L, 3) int64 (t, h, w) ids of one scene, laid out group by group: text then video.

    text_lens[i]: text tokens of group i; grids[i]: (F', H', W') patch grid of its video or
    None (text only, e.g. the global prompt). L = sum(text_lens) + sum(F' * H' * W').
    Video tokens are in raster order (f, then y, then x), as `patchify` produces them.
    """
    if len(text_lens) != len(grids):
        raise ValueError(
            f"got {len(text_lens)} text lengths but {len(grids)} grids; give one of each per "
            "group (global prompt first, with grid None)"
        )
    parts: list[Tensor] = []
    start = 0
    for i, (n_text, grid) in enumerate(zip(text_lens, grids)):
        if n_text < 0 or (grid is not None and (len(grid) != 3 or min(grid) < 1)):
            raise ValueError(f"group {i}: bad text length {n_text} or grid {grid}")
        k = torch.arange(n_text, dtype=torch.long)
        parts.append((start + k)[:, None].expand(n_text, 3))     # (L_i, 3), on the diagonal
        top = start + n_text - 1                                  # largest coordinate so far
        if grid is not None:
            f, y, x = torch.meshgrid(
                *(torch.arange(n, dtype=torch.long) for n in grid), indexing="ij"
            )
            fyx = torch.stack([f, y, x], dim=-1).reshape(-1, 3)  # (F'H'W', 3)
            parts.append(start + n_text + fyx)
            top = start + n_text + max(grid) - 1
        start = max(start, top + 1)
    if not parts:
        return torch.zeros(0, 3, dtype=torch.long)
    return torch.cat(parts).contiguous()


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to the (t, h, w) RoPE axes; each even, summing to head_dim.

    h and w get 2 * (head_dim // 6) channels each, t gets the rest (t >= h = w), so e.g.
    head_dim 64 -> (24, 20, 20), 128 -> (44, 42, 42). Wan's `WanRotaryPosEmbed` splits the same
    way (tests/model/test_wan.py checks it at several head dims); this is the only place lct does.
    """
    hw = 2 * (head_dim // 6)
    return (head_dim - 2 * hw, hw, hw)


def rope_frequencies(
    ids: Tensor, axes_dims: tuple[int, int, int], theta: float = 10_000.0
) -> tuple[Tensor, Tensor]:
    """cos, sin of the rotation angles: ids (..., L, 3) -> two (..., L, head_dim // 2).

    Axis a (t, h or w) owns axes_dims[a] channels of each head and rotates them as ordinary
    1D RoPE of the a-th coordinate; the three slices are concatenated in (t, h, w) order.
    """
    if ids.shape[-1] != len(axes_dims):
        raise ValueError(f"ids have {ids.shape[-1]} axes but axes_dims {axes_dims} has {len(axes_dims)}")
    angles = []
    for a, dim in enumerate(axes_dims):
        if dim % 2:
            raise ValueError(f"every RoPE axis needs an even channel count, got {axes_dims}")
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[..., a, None].double() * inv_freq)     # (..., L, dim // 2)
    angle = torch.cat(angles, dim=-1)                            # (..., L, head_dim // 2)
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2j, 2j+1) of x (B, heads, L, head_dim) by cos/sin (B, L, head_dim // 2)."""
    if x.shape[-1] != 2 * cos.shape[-1]:
        raise ValueError(f"x has head_dim {x.shape[-1]} but the frequencies cover {2 * cos.shape[-1]}")
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, L, head_dim // 2)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return out.flatten(-2)                                       # (B, heads, L, head_dim)


def shot_position_ids(grids: list[tuple[int, int, int]]) -> Tensor:
    """(Lv, 3) int64 (f, h, w) ids of the video tokens of a scene for a cross-attention backbone (Wan).

    Wan's text enters through cross-attention and has no positions, so its scene layout is the
    rule above with no text groups: video token (f, y, x) of shot i -> (s_i + f, s_i + y, s_i + x),
    s_1 = 0, s_{i+1} = s_i + max(F'_i, H'_i, W'_i). Shots never share a coordinate triple, a
    one-shot scene gets Wan's native ids (f, y, x), and relative positions inside a shot are
    unchanged. grids[i] = (F', H', W') patch grid of shot i.
    """
    return scene_position_ids([0] * len(grids), list(grids))
