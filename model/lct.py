"""The LCT model: a scene-level MMDiT over global prompt + shots, with per-shot timesteps.

Input API (shapes per the legend in model/__init__.py):

    scene = Scene(global_text=(T0, Dt), shots=[Shot(text=(T, Dt), latent=(C, F, H, W)), ...])
    batch = collate([scene, ...], cfg)          # packs and pads scenes, builds ids and masks
    v = LCT(cfg)(batch, t)                      # t: (B, S) one timestep per shot
    v[b][i]                                     # (C, F, H, W) velocity of shot i of scene b

Inside one scene the tokens are grouped: group 0 is the global prompt (text only, no dummy
video tokens), group i is shot i (its text then its video). Text and video tokens travel in
two streams (separate weights) and meet in one joint attention; attention is permutation
equivariant, so each stream keeps its own order and the joint sequence is [text; video].

Conditioning: every token is modulated (adaLN-Zero) by the vector of its own group,
    c_shot_i = t_emb(t_i) + text_emb(mean of shot i's text features)
    c_global = g + text_emb(mean of the global text features)
where g is a learned "global" embedding used in place of a timestep (the global prompt is
clean text and is never noised). Text tokens of shot i share shot i's t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import LCTConfig
from .layers import FinalLayer, MLPEmbedder, MMDiTBlock, timestep_embedding
from .rope import rope_frequencies, scene_position_ids


@dataclass
class Shot:
    text: Tensor                     # (T, Dt) text token features of the shot prompt
    latent: Tensor                   # (C, F, H, W) latent (noisy z_t in training)
    text_mask: Tensor | None = None  # (T,) bool, True = real token; None = all real


@dataclass
class Scene:
    global_text: Tensor              # (T0, Dt) features of the global prompt
    shots: list[Shot]
    global_mask: Tensor | None = None


@dataclass
class Batch:
    """Packed, padded scenes. Group index: 0 = global prompt, i = shot i, -1 = padding."""

    txt: Tensor                      # (B, Lt, Dt) text features, zero at padding
    txt_group: Tensor                # (B, Lt) long
    vid: Tensor                      # (B, Lv, C * p_t * p_h * p_w) patchified latents
    vid_group: Tensor                # (B, Lv) long
    ids: Tensor                      # (B, Lt + Lv, 3) RoPE ids of [text; video]
    pooled: Tensor                   # (B, 1 + S, Dt) mean text features per group
    shot_mask: Tensor                # (B, S) bool, True = real shot
    latent_shapes: list[list[tuple[int, int, int, int]]]  # (C, F, H, W) per scene, per shot

    def to(self, device: torch.device | str) -> "Batch":
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(self).items()}
        return Batch(**moved)


def patchify(latent: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(C, F, H, W) -> (F' H' W', C p_t p_h p_w) tokens in raster order, F' = F // p_t etc."""
    C, Fr, H, W = latent.shape
    p_t, p_h, p_w = patch
    if Fr % p_t or H % p_h or W % p_w:
        raise ValueError(
            f"latent (C, F, H, W) = {tuple(latent.shape)} is not divisible by the patch "
            f"(p_t, p_h, p_w) = {patch}; crop or pad F, H, W to multiples of it"
        )
    x = latent.reshape(C, Fr // p_t, p_t, H // p_h, p_h, W // p_w, p_w)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)                           # (F', H', W', C, p_t, p_h, p_w)
    return x.reshape(-1, C * p_t * p_h * p_w)


def unpatchify(tokens: Tensor, shape: tuple[int, int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """Inverse of patchify: (F' H' W', C p_t p_h p_w) -> (C, F, H, W)."""
    C, Fr, H, W = shape
    p_t, p_h, p_w = patch
    x = tokens.reshape(Fr // p_t, H // p_h, W // p_w, C, p_t, p_h, p_w)
    return x.permute(3, 0, 4, 1, 5, 2, 6).reshape(C, Fr, H, W)


def _real_text(text: Tensor, mask: Tensor | None, where: str, text_dim: int) -> Tensor:
    if text.ndim != 2 or text.shape[1] != text_dim:
        raise ValueError(f"{where}: text features must be (T, {text_dim}), got {tuple(text.shape)}")
    return text if mask is None else text[mask.bool()]


def collate(scenes: list[Scene], cfg: LCTConfig) -> Batch:
    """Pack each scene into [text tokens] + [video tokens] with group ids and RoPE ids; pad to a batch."""
    if not scenes:
        raise ValueError("collate needs at least one scene")
    B, S = len(scenes), max(len(s.shots) for s in scenes)
    if S > cfg.max_shots or min(len(s.shots) for s in scenes) < 1:
        raise ValueError(f"every scene needs 1..{cfg.max_shots} shots, got {[len(s.shots) for s in scenes]}")
    rows = []
    for b, scene in enumerate(scenes):
        texts = [_real_text(scene.global_text, scene.global_mask, f"scene {b} global", cfg.text_dim)]
        vids, shapes = [], []
        for i, shot in enumerate(scene.shots):
            texts.append(_real_text(shot.text, shot.text_mask, f"scene {b} shot {i}", cfg.text_dim))
            if shot.latent.ndim != 4 or shot.latent.shape[0] != cfg.latent_channels:
                raise ValueError(
                    f"scene {b} shot {i}: latent must be (C={cfg.latent_channels}, F, H, W), "
                    f"got {tuple(shot.latent.shape)}"
                )
            vids.append(patchify(shot.latent, cfg.patch))        # (F'H'W', patch_dim)
            shapes.append(tuple(shot.latent.shape))
        grids = [None] + [tuple(n // p for n, p in zip(s[1:], cfg.patch)) for s in shapes]
        ids = scene_position_ids([len(t) for t in texts], grids)  # (L, 3) group by group
        vid_lens = [0] + [len(v) for v in vids]                  # the global group has no video
        is_text = torch.cat([torch.arange(len(t) + n) < len(t) for t, n in zip(texts, vid_lens)])
        txt_group = torch.cat([torch.full((len(t),), g) for g, t in enumerate(texts)])
        vid_group = torch.cat([torch.full((len(v),), g + 1) for g, v in enumerate(vids)])
        pooled = torch.stack([t.mean(0) if len(t) else t.new_zeros(cfg.text_dim) for t in texts])
        rows.append(dict(txt=torch.cat(texts), txt_group=txt_group, vid=torch.cat(vids),
                         vid_group=vid_group, txt_ids=ids[is_text], vid_ids=ids[~is_text],
                         pooled=pooled, shapes=shapes))

    def pad(key: str, length: int, value: float = 0) -> Tensor:   # stack rows, padding dim 0
        return torch.stack([F.pad(r[key], (0, 0) * (r[key].ndim - 1) + (0, length - len(r[key])),
                                  value=value) for r in rows])

    Lt, Lv = max(len(r["txt"]) for r in rows), max(len(r["vid"]) for r in rows)
    return Batch(
        txt=pad("txt", Lt), txt_group=pad("txt_group", Lt, -1),
        vid=pad("vid", Lv), vid_group=pad("vid_group", Lv, -1),
        ids=torch.cat([pad("txt_ids", Lt), pad("vid_ids", Lv)], dim=1),
        pooled=pad("pooled", 1 + S),
        shot_mask=torch.arange(S)[None] < torch.tensor([len(s.shots) for s in scenes])[:, None],
        latent_shapes=[r["shapes"] for r in rows],
    )


def attention_mask(group: Tensor, mode: str) -> Tensor:
    """group (B, L) of the joint sequence -> (B, 1, L, L) bool, True = query may attend key.

    bidirectional: every real token sees every real token of its scene.
    context_causal: a token of group g sees groups 0..g (global prompt, earlier shots, itself).
    Padding keys are never seen; padding queries see only themselves (avoids all-masked rows).
    """
    q, k = group[:, :, None], group[:, None, :]                 # (B, L, 1), (B, 1, L)
    allowed = k >= 0
    if mode == "context_causal":
        allowed = allowed & (k <= q)
    elif mode != "bidirectional":
        raise ValueError(f"unknown attention mode {mode!r}; use 'bidirectional' or 'context_causal'")
    eye = torch.eye(group.shape[1], dtype=torch.bool, device=group.device)
    return (allowed | eye)[:, None]


class LCT(nn.Module):
    def __init__(self, cfg: LCTConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = cfg.grad_checkpointing          # flag; may be toggled later
        D = cfg.width
        self.txt_in = nn.Linear(cfg.text_dim, D)
        self.vid_in = nn.Linear(cfg.patch_dim, D)
        self.time_emb = MLPEmbedder(256, D)
        self.text_emb = MLPEmbedder(cfg.text_dim, D)              # pooled text of a group
        self.global_emb = nn.Parameter(torch.zeros(D))           # "timestep" of the global group
        self.blocks = nn.ModuleList(
            MMDiTBlock(D, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, last=i == cfg.depth - 1)
            for i in range(cfg.depth)
        )
        self.final = FinalLayer(D, cfg.patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embedders, zero adaLN and output (adaLN-Zero, DiT)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.time_emb, self.text_emb):
            nn.init.normal_(emb.fc1.weight, std=0.02)
            nn.init.normal_(emb.fc2.weight, std=0.02)
        nn.init.normal_(self.global_emb, std=0.02)
        for block in self.blocks:
            for stream in (block.txt, block.vid):
                nn.init.zeros_(stream.modulation.weight)
                nn.init.zeros_(stream.modulation.bias)
        for layer in (self.final.modulation, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, batch: Batch, t: Tensor) -> list[list[Tensor]]:
        """t (B, S) timesteps in [0, 1] (values at padded shots are ignored) -> v[b][i] (C, F, H, W)."""
        cfg = self.cfg
        B, S = batch.shot_mask.shape
        if t.shape != (B, S):
            raise ValueError(f"t must be (B, S) = {(B, S)} (one timestep per shot), got {tuple(t.shape)}")

        # 1. Embed tokens and per-group conditioning vectors c (B, 1 + S, D).
        dtype = self.txt_in.weight.dtype                         # inputs follow the weights (bf16 ok)
        txt = self.txt_in(batch.txt.to(dtype))                   # (B, Lt, D)
        vid = self.vid_in(batch.vid.to(dtype))                   # (B, Lv, D)
        c_time = self.time_emb(timestep_embedding(t).to(dtype))  # (B, S, D)
        c = torch.cat([self.global_emb.expand(B, 1, -1), c_time], dim=1)
        c = c + self.text_emb(batch.pooled.to(dtype))            # (B, 1 + S, D)

        # 2. Positions and attention mask of the joint sequence [text; video].
        cos, sin = rope_frequencies(batch.ids, cfg.rope_axes, cfg.rope_theta)
        group = torch.cat([batch.txt_group, batch.vid_group], dim=1)  # (B, L)
        mask = attention_mask(group, cfg.attention)              # (B, 1, L, L)
        txt_group, vid_group = batch.txt_group.clamp(min=0), batch.vid_group.clamp(min=0)

        # 3. Dual-stream blocks.
        for block in self.blocks:
            args = (txt, vid, c, txt_group, vid_group, cos, sin, mask)
            if self.grad_checkpointing and torch.is_grad_enabled():
                txt, vid = checkpoint(block, *args, use_reentrant=False)
            else:
                txt, vid = block(*args)

        # 4. Video tokens -> patch features -> per-shot latents.
        out = self.final(vid, c, vid_group)                      # (B, Lv, patch_dim)
        velocities = []
        for b, shapes in enumerate(batch.latent_shapes):
            per_shot = []
            for i, shape in enumerate(shapes):
                tokens = out[b][batch.vid_group[b] == i + 1]         # (F'H'W', patch_dim)
                per_shot.append(unpatchify(tokens, shape, cfg.patch))
            velocities.append(per_shot)
        return velocities
