"""The LCT model: a scene-level MMDiT over global prompt + shots, with per-shot timesteps.

Input API (shapes per the legend in model/__init__.py):

    scene = Scene(global_text=(T0, Dt), shots=[Shot(text=(T, Dt), latent=(C, F, H, W)), ...])
    batch = collate([scene, ...], cfg)          # packs and pads scenes, builds RoPE and group ids
    v = LCT(cfg)(batch, t)                      # t: (B, S) one timestep per shot
    v[b][i]                                     # (C, F, H, W) velocity of shot i of scene b

KV-cache (context-causal only, one scene): cache = model.prefill(batch, t, groups=1 + k) holds
the K/V of the global prompt and shots 1..k; model.forward_with_cache(batch, t, cache) is then
v of shot k + 1 computed from its own tokens only (== forward with the causal mask), and
model.extend_cache(batch, t, cache) appends shot k + 1. model/sampling.py drives it.

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

from .attention import BlockAttention
from .attention import dense_mask as attention_mask  # noqa: F401  (model/wan.py imports it from here)
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
    if S > cfg.context_shots or min(len(s.shots) for s in scenes) < 1:
        raise ValueError(f"every scene needs 1..{cfg.context_shots} shots, got {[len(s.shots) for s in scenes]}")
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


def unpack(out: Tensor, batch: Batch, patch: tuple[int, int, int]) -> list[list[Tensor]]:
    """(B, Lv, patch_dim) video-token outputs -> v[b][i] (C, F, H, W) per real shot."""
    velocities = []
    for b, shapes in enumerate(batch.latent_shapes):
        per_shot = []
        for i, shape in enumerate(shapes):
            tokens = out[b][batch.vid_group[b] == i + 1]         # (F'H'W', patch_dim)
            per_shot.append(unpatchify(tokens, shape, patch))
        velocities.append(per_shot)
    return velocities


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
        # The attention processor (model/attention.py): plan(group, mode) once per forward, then
        # (q, k, v, plan) per block. Not a module and holds no weights; training swaps in its
        # sequence-parallel one with set_attention.
        self.attention = BlockAttention()
        self.initialize_weights()

    def set_attention(self, processor) -> None:
        """Route every block's attention through `processor` (same interface as BlockAttention)."""
        self.attention = processor

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

    def forward(self, batch: Batch, t: Tensor, packed: bool = False) -> list[list[Tensor]] | Tensor:
        """t (B, S) timesteps in [0, 1] (values at padded shots are ignored) -> v[b][i] (C, F, H, W).

        packed=True returns the video-token velocities as one (B, Lv, patch_dim) tensor instead
        (`unpack` splits them): a distributed engine (DeepSpeed ZeRO-3) hooks every output tensor,
        so the number of outputs must not depend on the number of shots.
        """
        cfg = self.cfg
        self._check_t(batch, t)

        # 1. Embed tokens and per-group conditioning vectors c (B, 1 + S, D).
        dtype = self.txt_in.weight.dtype                         # inputs follow the weights (bf16 ok)
        txt = self.txt_in(batch.txt.to(dtype))                   # (B, Lt, D)
        vid = self.vid_in(batch.vid.to(dtype))                   # (B, Lv, D)
        c = self._conditioning(batch, t)                         # (B, 1 + S, D)

        # 2. Positions and the attention plan of the joint sequence [text; video]: where the
        #    blocks of the bidirectional / context-causal / padding mask are (no L x L tensor).
        cos, sin = rope_frequencies(batch.ids, cfg.rope_axes, cfg.rope_theta)
        group = torch.cat([batch.txt_group, batch.vid_group], dim=1)  # (B, L)
        plan = self.attention.plan(group, cfg.attention)
        txt_group, vid_group = batch.txt_group.clamp(min=0), batch.vid_group.clamp(min=0)

        # 3. Dual-stream blocks.
        for block in self.blocks:
            args = (txt, vid, c, txt_group, vid_group, cos, sin, plan)
            if self.grad_checkpointing and torch.is_grad_enabled():
                txt, vid, _ = checkpoint(block, *args, attention=self.attention, use_reentrant=False)
            else:
                txt, vid, _ = block(*args, attention=self.attention)

        # 4. Video tokens -> patch features -> per-shot latents.
        out = self.final(vid, c, vid_group)                      # (B, Lv, patch_dim)
        return out if packed else unpack(out, batch, cfg.patch)

    def _check_t(self, batch: Batch, t: Tensor) -> None:
        B, S = batch.shot_mask.shape
        if t.shape != (B, S):
            raise ValueError(f"t must be (B, S) = {(B, S)} (one timestep per shot), got {tuple(t.shape)}")

    def _conditioning(self, batch: Batch, t: Tensor) -> Tensor:
        """c (B, 1 + S, D): global_emb or t_emb(t_i), plus text_emb of the group's pooled text."""
        dtype = self.txt_in.weight.dtype
        B = t.shape[0]
        c_time = self.time_emb(timestep_embedding(t).to(dtype))  # (B, S, D)
        c = torch.cat([self.global_emb.expand(B, 1, -1), c_time], dim=1)
        return c + self.text_emb(batch.pooled.to(dtype))         # (B, 1 + S, D)

    # --- KV-cache (context-causal only) --------------------------------------------------
    # In context-causal attention group g sees groups 0..g only, so the keys and values of the
    # global prompt and of history shots never change while a later shot is denoised. They are
    # computed once (group by group) and each later group attends [cache; its own tokens].

    @torch.no_grad()
    def prefill(self, batch: Batch, t: Tensor, groups: int) -> "KVCache":
        """K/V of groups 0..groups-1 of one scene (group 0 = global prompt, group i = shot i).

        batch: collate([scene]) of a scene holding at least those groups; t (1, S) its shot
        timesteps (history shots at their conditioning t_c). groups=1 caches the global prompt.
        """
        cache = KVCache.empty(len(self.blocks))
        for _ in range(groups):
            cache = self.extend_cache(batch, t, cache)
        return cache

    @torch.no_grad()
    def extend_cache(self, batch: Batch, t: Tensor, cache: "KVCache") -> "KVCache":
        """A new cache that also holds group cache.groups of `batch` (computed with t)."""
        _, kvs = self._cached_group(batch, t, cache, with_output=False)
        return cache.append(kvs)

    @torch.no_grad()
    def forward_with_cache(self, batch: Batch, t: Tensor, cache: "KVCache") -> Tensor:
        """Velocity (C, F, H, W) of shot g = cache.groups (group g) of one scene, attending the cache.

        Same inputs as forward (batch of one scene, t (1, S)); only group g's tokens are
        computed, and the result equals forward(batch, t)[0][g - 1] with the causal mask.
        """
        out, _ = self._cached_group(batch, t, cache, with_output=True)
        return out

    def _cached_group(
        self, batch: Batch, t: Tensor, cache: "KVCache", with_output: bool
    ) -> tuple[Tensor | None, list[tuple[Tensor, Tensor]]]:
        cfg = self.cfg
        if cfg.attention != "context_causal":
            raise ValueError(
                f"a KV-cache needs attention='context_causal' (got {cfg.attention!r}): in "
                "bidirectional mode history tokens see the new shot, so their K/V change every "
                "step; recompute the full scene instead"
            )
        self._check_t(batch, t)
        B, S = batch.shot_mask.shape
        g = cache.groups
        if B != 1:
            raise ValueError(f"the KV-cache holds one scene; got a batch of {B} (call per scene)")
        if with_output and g == 0:
            raise ValueError("the cache is empty; prefill at least the global prompt (groups=1) first")
        if g > S:
            raise ValueError(
                f"the cache holds the global prompt and {g - 1} shots but the scene has only {S} "
                f"shots, so there is no shot {g} to compute; pass a scene with the next shot"
            )
        txt_sel, vid_sel = batch.txt_group[0] == g, batch.vid_group[0] == g    # (Lt,), (Lv,)
        n_past = int((batch.txt_group[0] < g).sum() + (batch.vid_group[0] < g).sum())  # B = 1: no padding
        if n_past != cache.length:
            raise ValueError(
                f"the cache holds {cache.length} tokens but groups 0..{g - 1} of this scene have "
                f"{n_past}; build the cache from the same global prompt and history shots"
            )

        # 1. Tokens, positions and conditioning of group g alone (positions from the full scene).
        Lt = batch.txt.shape[1]
        dtype = self.txt_in.weight.dtype
        txt = self.txt_in(batch.txt[:, txt_sel].to(dtype))     # (1, Lt_g, D)
        vid = self.vid_in(batch.vid[:, vid_sel].to(dtype))     # (1, Lv_g, D)
        ids = torch.cat([batch.ids[:, :Lt][:, txt_sel], batch.ids[:, Lt:][:, vid_sel]], dim=1)
        cos, sin = rope_frequencies(ids, cfg.rope_axes, cfg.rope_theta)
        c = self._conditioning(batch, t)[:, g : g + 1]           # (1, 1, D), local group 0
        txt_group = torch.zeros(txt.shape[:2], dtype=torch.long, device=txt.device)
        vid_group = torch.zeros(vid.shape[:2], dtype=torch.long, device=vid.device)

        # 2. Blocks: group g attends [cached groups < g; itself] (no mask needed, B = 1; plain
        #    single-device attention: the KV-cache is an inference path).
        kvs = []
        for i, block in enumerate(self.blocks):
            past = None if g == 0 else (cache.keys[i], cache.values[i])
            txt, vid, kv = block(txt, vid, c, txt_group, vid_group, cos, sin, None, past)
            kvs.append(kv)
        if not with_output:
            return None, kvs

        # 3. Video tokens -> latent of shot g.
        out = self.final(vid, c, vid_group)[0]                   # (Lv_g, patch_dim)
        return unpatchify(out, batch.latent_shapes[0][g - 1], cfg.patch), kvs


@dataclass(frozen=True)
class KVCache:
    """Per-block keys and values (after QK-norm and RoPE) of groups 0..groups-1 of one scene."""

    keys: tuple[Tensor, ...]         # per block (1, heads, Lc, head_dim)
    values: tuple[Tensor, ...]
    groups: int                      # cached groups: 1 (global prompt) + history shots
    depth: int

    @staticmethod
    def empty(depth: int) -> "KVCache":
        return KVCache(keys=(), values=(), groups=0, depth=depth)

    @property
    def length(self) -> int:
        """Lc, cached tokens (text and video) per block."""
        return self.keys[0].shape[2] if self.keys else 0

    def append(self, kvs: list[tuple[Tensor, Tensor]]) -> "KVCache":
        """A new cache with one more group; kvs: per block (k, v) (1, heads, L_g, head_dim)."""
        assert len(kvs) == self.depth, (len(kvs), self.depth)
        if not self.keys:
            keys, values = tuple(k for k, _ in kvs), tuple(v for _, v in kvs)
        else:
            keys = tuple(torch.cat([a, k], dim=2) for a, (k, _) in zip(self.keys, kvs))
            values = tuple(torch.cat([a, v], dim=2) for a, (_, v) in zip(self.values, kvs))
        return KVCache(keys, values, self.groups + 1, self.depth)
