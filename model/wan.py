"""LCT on a pre-trained Wan 2.x: the diffusers `WanTransformer3DModel` expanded to whole scenes.

    cfg, base = load_wan_transformer(DIR)           # DIR/transformer in the diffusers layout
    model = WanLCT.wrap(base, cfg)                  # the same module, same weights, scene forward
    v = model(collate([scene, ...], model.cfg), t)  # t (B, S) one timestep per shot -> v[b][i]

The paper's changes, on this base (shapes per the legend in model/__init__.py):
1. All shots' video tokens form one self-attention sequence (B, Lv, D); Wan has no text
   tokens in self-attention, so groups are the shots only (group i = shot i, -1 = padding).
2. Positions: `rope.shot_position_ids` (the native rule without text groups), embedded with
   Wan's own split of the head dim (`rope.rope_axes`) and theta 10000.
3. Per-shot t as per-token timesteps: t (B, S) * 1000 (Wan's timestep scale) is embedded
   once per shot and gathered to the shot's tokens in every block's adaLN.
4. Shot-local text: each shot's video tokens cross-attend to [global prompt; own shot prompt],
   zero-padded to Wan's prompt length `text_len` (512) as Wan pipelines pad umT5 features;
   keys past max(text_len, real tokens) of other shots or scenes are masked.
5. Context-causal self-attention (`model.lct.attention_mask`, shared with the native model)
   and a KV-cache of history shots with the API of `LCT` (prefill / extend_cache /
   forward_with_cache), so `model.sampling` drives both backbones.
A one-shot scene is exactly `WanTransformer3DModel.forward` (tests/model/test_wan.py).

How: `wrap` changes the class of the loaded model (and of its blocks) to the subclasses below,
which add no state, only the scene forward. Every parameter is therefore read inside the
forward of the module that owns it, which DeepSpeed ZeRO-3 needs to gather it, and the state
dict keeps diffusers' names (the export is `WanTransformer3DModel.save_pretrained`).

Attention: by default self- and cross-attention go through `block.attn1` / `block.attn2`, i.e.
the native `WanAttnProcessor` (and `dispatch_attention_fn`), self-attention with a dense
(B, 1, Lv, Lv) mask. `set_attention(processor)` routes self-attention through an attention
processor of model/attention.py instead (the interface of `LCT.set_attention`: the shot-block
plan, no L x L mask), with the same projections, norms and RoPE (`_qkv`). That is the
sequence-parallel hook: training's Ulysses processor on a batch whose video tokens are sharded
(`shard_batch(..., text=False)`: Wan's text is only cross-attended, per token, so every rank keeps
all of it); the processor's `shard` picks this rank's RoPE positions. The KV-cache path
(`_cached_self_attention`) is the same code with past keys/values prepended (single device).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ATTENTION_MODES, AttentionMode
from .lct import Batch, KVCache, attention_mask, unpack, unpatchify
from .rope import rope_axes, rope_frequencies, shot_position_ids

try:  # diffusers is a dependency of lct; imported lazily only to give a teaching error
    from diffusers import WanTransformer3DModel
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
except ImportError as e:  # pragma: no cover
    raise ImportError("the Wan backbone needs diffusers (pip install 'diffusers==0.39.*')") from e

WAN_TIMESTEP_SCALE = 1000.0   # Wan embeds t * 1000 (its scheduler's timesteps = sigma * 1000)
WAN_TEXT_LEN = 512            # Wan pipelines pad umT5 features with zeros to 512 tokens
WAN_FLOW_SHIFT = 3.0          # Wan 2.1 T2V sampling shift at 480p (5.0 at 720p), when the folder has no scheduler/


@dataclass(frozen=True)
class WanConfig:
    """A Wan transformer architecture (its diffusers config) plus what lct adds to it."""

    transformer: dict = field(default_factory=dict)   # WanTransformer3DModel init args
    context_shots: int = 9
    attention: AttentionMode = "bidirectional"
    grad_checkpointing: bool = False
    text_len: int = WAN_TEXT_LEN     # cross-attention context per shot, zero-padded to this
    text_features: int | None = None  # Dt of the incoming text features; None = the base's text_dim
                                      # (umT5); else a trained Linear projects them (e.g. MiniLM 384)

    def __post_init__(self) -> None:
        t = self.transformer
        if not isinstance(t, dict):
            raise ValueError(f"WanConfig.transformer must be a dict of WanTransformer3DModel init args, got {t!r}")
        known = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
        unknown = sorted(set(t) - known)
        if unknown:
            raise ValueError(f"WanConfig.transformer has keys {unknown} that diffusers' WanTransformer3DModel does "
                             f"not take (known: {sorted(known)})")
        for key in ("num_attention_heads", "attention_head_dim", "in_channels", "num_layers", "text_dim"):
            if not isinstance(t.get(key), int) or t[key] < 1:
                raise ValueError(f"WanConfig.transformer[{key!r}] must be a positive int, got {t.get(key)!r}")
        if t.get("image_dim") is not None or t.get("added_kv_proj_dim") is not None:
            raise ValueError("only Wan text-to-video transformers are supported (this one has image_dim / "
                             "added_kv_proj_dim: an image-to-video model)")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.context_shots < 1 or self.text_len < 1:
            raise ValueError(f"context_shots and text_len must be >= 1, got {self.context_shots}, {self.text_len}")
        if t.get("out_channels") not in (None, t["in_channels"]):
            raise ValueError(f"out_channels {t['out_channels']} != in_channels {t['in_channels']}: not a T2V model")

    # the fields `collate`, `unpack` and `model.sampling` read, as on LCTConfig
    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.transformer.get("patch_size", (1, 2, 2)))

    @property
    def latent_channels(self) -> int:
        return self.transformer["in_channels"]

    @property
    def text_dim(self) -> int:
        return self.text_features or self.transformer["text_dim"]

    @property
    def heads(self) -> int:
        return self.transformer["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.transformer["attention_head_dim"]

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def depth(self) -> int:
        return self.transformer["num_layers"]

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        return rope_axes(self.head_dim)

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * math.prod(self.patch)

    def with_(self, **changes) -> "WanConfig":
        return replace(self, **changes)


def _wan(**changes) -> dict:
    base = dict(patch_size=[1, 2, 2], in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    return base | changes


# Architectures only (no weights). Parameter counts of the released checkpoints (tested): 1.42B
# (the "1.3B": 2.84 GB in bf16) and 14.3B.
WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(_wan(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)),
    "wan2.1-t2v-14b": WanConfig(_wan(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)),
}


def transformer_args(config: dict) -> dict:
    """The init args of a diffusers config dict (drops `_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


# -- the scene model --------------------------------------------------------------------------
class SceneWanBlock(WanTransformerBlock):
    """A Wan block over a scene: per-shot adaLN gathered to tokens, masked self/cross-attention."""

    def forward(self, x: Tensor, ctx: Tensor, temb: Tensor, shot: Tensor, rotary: tuple[Tensor, Tensor],
                mask: Tensor | None, ctx_mask: Tensor | None, past: tuple[Tensor, Tensor] | None = None,
                keep_kv: bool = False, attention=None):
        """x (B, Lv, D); ctx (B, Lc', D) projected text; temb (B, S, 6, D) per shot; shot (B, Lv) the
        shot index of each token (0 at padding); rotary two (B, Lv, 1, head_dim); mask (B, 1, Lv, Lv)
        or None (or the AttentionPlan of `attention`, a model/attention.py processor, when given);
        ctx_mask (B, 1, Lv, Lc') or None; past (k, v) (B, heads, Lp, head_dim) history."""
        B = x.shape[0]
        mod = (self.scale_shift_table.unsqueeze(0) + temb.float())           # (B, S, 6, D)
        mod = mod[torch.arange(B, device=x.device)[:, None], shot]           # (B, Lv, 6, D)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mod.unbind(2)

        # 1. Self-attention (the native processor unless a KV-cache is involved)
        norm_x = (self.norm1(x.float()) * (1 + scale_msa) + shift_msa).type_as(x)
        kv = None
        if attention is not None:                                  # a model/attention.py processor + plan
            attn_output = _routed_self_attention(self.attn1, norm_x, rotary, attention, mask)
        elif past is None and not keep_kv:
            attn_output = self.attn1(norm_x, None, mask, rotary)
        else:
            attn_output, kv = _cached_self_attention(self.attn1, norm_x, rotary, mask, past)
        x = (x.float() + attn_output * gate_msa).type_as(x)

        # 2. Shot-local cross-attention
        norm_x = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(norm_x, ctx, ctx_mask, None)

        # 3. Feed-forward
        norm_x = (self.norm3(x.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
        ff_output = self.ffn(norm_x)
        x = (x.float() + ff_output.float() * c_gate_msa).type_as(x)
        return x, kv


def _qkv(attn, x: Tensor, rotary) -> tuple[Tensor, Tensor, Tensor]:
    """WanAttnProcessor's q, k, v (no fused projections, no image branch): x (B, L, D) -> (B, L, heads, head_dim)."""
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k, v = (y.unflatten(2, (attn.heads, -1)) for y in (q, k, v))   # (B, L, heads, head_dim)
    cos, sin = rotary

    def rotate(h: Tensor) -> Tensor:                                   # as in WanAttnProcessor
        x1, x2 = h.unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos[..., 0::2], sin[..., 1::2]
        out = torch.empty_like(h)
        out[..., 0::2] = x1 * c - x2 * s
        out[..., 1::2] = x1 * s + x2 * c
        return out.type_as(h)

    return rotate(q), rotate(k), v


def _routed_self_attention(attn, x: Tensor, rotary, attention, plan) -> Tensor:
    """Self-attention through a model/attention.py processor: x (B, L, D) -> (B, L, D)."""
    q, k, v = (y.transpose(1, 2) for y in _qkv(attn, x, rotary))       # (B, heads, L, head_dim)
    out = attention(q, k, v, plan).transpose(1, 2).flatten(2, 3).type_as(q)
    return attn.to_out[1](attn.to_out[0](out))


def _cached_self_attention(attn, x: Tensor, rotary, mask: Tensor | None, past):
    """WanAttnProcessor's self-attention with past K/V.

    x (B, L, D) -> (out (B, L, D), (k, v) (B, heads, L, head_dim) of these tokens after norm + RoPE).
    """
    q, k, v = _qkv(attn, x, rotary)
    own = (k.transpose(1, 2), v.transpose(1, 2))                       # (B, heads, L, head_dim)
    if past is not None:
        k = torch.cat([past[0].transpose(1, 2), k], dim=1)
        v = torch.cat([past[1].transpose(1, 2), v], dim=1)
    proc = attn.processor
    out = dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                backend=getattr(proc, "_attention_backend", None),
                                parallel_config=getattr(proc, "_parallel_config", None))
    out = out.flatten(2, 3).type_as(q)
    out = attn.to_out[1](attn.to_out[0](out))
    return out, own


class WanLCT(WanTransformer3DModel):
    """A loaded `WanTransformer3DModel` with LCT's scene forward (see the module docstring)."""

    cfg: WanConfig
    attention = None                 # a model/attention.py processor for self-attention; None = Wan's own

    def set_attention(self, processor) -> None:
        """Route self-attention through `processor` (the interface of LCT.set_attention); None = Wan's own."""
        self.attention = processor

    @classmethod
    def wrap(cls, base: WanTransformer3DModel, cfg: WanConfig) -> "WanLCT":
        """Turn `base` (weights kept, no copy) into the scene model; adds the text projection if any."""
        if getattr(base, "fused_projections", False) or any(
                getattr(b.attn1, "fused_projections", False) for b in base.blocks):
            raise ValueError("unfuse the attention projections of the Wan model before wrapping it")
        base.__class__ = cls
        for block in base.blocks:
            block.__class__ = SceneWanBlock
        base.cfg = cfg
        base.grad_checkpointing = cfg.grad_checkpointing
        if cfg.text_features is not None and not hasattr(base, "text_proj"):
            base.text_proj = nn.Linear(cfg.text_features, cfg.transformer["text_dim"])
            nn.init.normal_(base.text_proj.weight, std=cfg.text_features ** -0.5)
            nn.init.zeros_(base.text_proj.bias)
        return base

    def native_state_dict(self) -> dict[str, Tensor]:
        """The weights of the diffusers model alone (no lct text projection)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text_proj.")}

    # -- inputs of one pass -----------------------------------------------------------------
    def _context(self, batch: Batch, shots: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Cross-attention context of (scene b, shot i) pairs: [global; shot i's prompt] zero-padded.

        Returns ctx (N, Lc, Dt) and valid (N, Lc) bool, Lc = max(text_len, longest real context);
        keys beyond max(text_len, own real length) are invalid, so padding never depends on the batch.
        """
        txt = batch.txt
        if getattr(self, "text_proj", None) is not None:
            txt = self.text_proj(txt.to(self.text_proj.weight.dtype))         # (B, Lt, text_dim)
        rows = [txt[b][(batch.txt_group[b] == 0) | (batch.txt_group[b] == i + 1)] for b, i in shots]
        Lc = max([self.cfg.text_len] + [len(r) for r in rows])
        ctx = torch.stack([F.pad(r, (0, 0, 0, Lc - len(r))) for r in rows])   # (N, Lc, Dt)
        lens = torch.tensor([max(self.cfg.text_len, len(r)) for r in rows], device=txt.device)
        valid = torch.arange(Lc, device=txt.device)[None] < lens[:, None]     # (N, Lc)
        return ctx, valid

    def _rotary(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Wan's (cos, sin), each (B, Lv, 1, head_dim), of the interleaved shot positions."""
        p = self.cfg.patch
        ids = []
        for shapes in batch.latent_shapes:
            grids = [tuple(n // q for n, q in zip(s[1:], p)) for s in shapes]
            ids.append(shot_position_ids(grids))                              # (Lv_b, 3)
        Lv = max(len(i) for i in ids)                                         # the whole scene's tokens
        ids = torch.stack([F.pad(i, (0, 0, 0, Lv - len(i))) for i in ids]).to(batch.vid.device)
        if self.attention is not None:                                        # this rank's share of them
            ids = self.attention.shard(ids)
        cos, sin = rope_frequencies(ids, self.cfg.rope_axes, 10_000.0)        # (B, Lv, head_dim // 2)
        return (cos.repeat_interleave(2, -1)[:, :, None], sin.repeat_interleave(2, -1)[:, :, None])

    def _embed_video(self, vid: Tensor) -> Tensor:
        """(B, Lv, C p_t p_h p_w) patchified latents -> (B, Lv, D) via Wan's Conv3d patch embedding.

        lct's patch features are ordered (C, p_t, p_h, p_w), the conv kernel's order, so each token
        is one stride-sized conv window: the very weights and reduction of the native embedding.
        """
        B, Lv, _ = vid.shape
        conv = self.patch_embedding
        x = vid.to(conv.weight.dtype).reshape(B * Lv, self.cfg.latent_channels, *self.cfg.patch)
        return conv(x).reshape(B, Lv, -1)

    def _time(self, t: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """t (B, S) in [0, 1] -> temb (B, S, D), timestep_proj (B, S, 6, D), projected ctx."""
        B, S = t.shape
        ts = t.float().flatten() * WAN_TIMESTEP_SCALE                         # (B S,)
        temb, proj, ctx, _ = self.condition_embedder(ts, ctx, None, timestep_seq_len=S)
        return temb, proj.unflatten(2, (6, -1)), ctx

    def _output(self, x: Tensor, temb: Tensor, shot: Tensor) -> Tensor:
        """(B, Lv, D) -> (B, Lv, C p_t p_h p_w) in lct's patch order."""
        B = x.shape[0]
        mod = self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)         # (B, S, 2, D)
        shift, scale = mod[torch.arange(B, device=x.device)[:, None], shot].unbind(2)   # (B, Lv, D)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)                                                  # (B, Lv, p_t p_h p_w C)
        p_t, p_h, p_w = self.cfg.patch
        x = x.unflatten(-1, (p_t, p_h, p_w, self.cfg.latent_channels))
        return x.permute(0, 1, 5, 2, 3, 4).flatten(2)                         # (B, Lv, C p_t p_h p_w)

    # -- the scene forward ------------------------------------------------------------------
    def forward(self, batch: Batch, t: Tensor, packed: bool = False):
        """As `LCT.forward`: t (B, S) -> v[b][i] (C, F, H, W), or (B, Lv, patch_dim) when packed."""
        cfg = self.cfg
        B, S = batch.shot_mask.shape
        if t.shape != (B, S):
            raise ValueError(f"t must be (B, S) = {(B, S)} (one timestep per shot), got {tuple(t.shape)}")

        # 1. Video tokens, positions, per-shot timestep embeddings and shot-local text contexts.
        x = self._embed_video(batch.vid)                                      # (B, Lv, D)
        rotary = self._rotary(batch)
        shot = (batch.vid_group - 1).clamp(min=0)                             # (B, Lv) shot index
        ctx, valid = self._context(batch, [(b, i) for b in range(B) for i in range(S)])
        Lc = ctx.shape[1]
        temb, proj, ctx = self._time(t, ctx.reshape(B, S * Lc, -1))           # ctx (B, S Lc, D)

        # 2. Masks: self-attention over the scene; cross-attention to the own shot's context only.
        if self.attention is not None:                                        # the shot-block plan, no L x L
            mask = self.attention.plan(batch.vid_group, cfg.attention)
        else:
            full = cfg.attention == "bidirectional" and bool((batch.vid_group >= 0).all())
            mask = None if full else attention_mask(batch.vid_group, cfg.attention)   # (B, 1, Lv, Lv)
        ctx_mask = None
        if S > 1 or not bool(valid.all()):
            key_shot = torch.arange(S, device=x.device).repeat_interleave(Lc)      # (S Lc,)
            ctx_mask = (shot[:, :, None] == key_shot[None, None]) & valid.reshape(B, 1, S * Lc)
            ctx_mask = ctx_mask[:, None]                                      # (B, 1, Lv, S Lc)

        # 3. Blocks.
        for block in self.blocks:
            args = (x, ctx, proj, shot, rotary, mask, ctx_mask)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, _ = checkpoint(block, *args, attention=self.attention, use_reentrant=False)
            else:
                x, _ = block(*args, attention=self.attention)

        # 4. Output projection -> per-shot velocities.
        out = self._output(x, temb, shot)                                     # (B, Lv, patch_dim)
        return out if packed else unpack(out, batch, cfg.patch)

    # -- KV-cache (context-causal only), the API of LCT ---------------------------------------
    # Group 0 (the global prompt) has no self-attention tokens in Wan: its cache entry is empty.

    @torch.no_grad()
    def prefill(self, batch: Batch, t: Tensor, groups: int) -> KVCache:
        cache = KVCache.empty(len(self.blocks))
        for _ in range(groups):
            cache = self.extend_cache(batch, t, cache)
        return cache

    @torch.no_grad()
    def extend_cache(self, batch: Batch, t: Tensor, cache: KVCache) -> KVCache:
        _, kvs = self._cached_group(batch, t, cache, with_output=False)
        return cache.append(kvs)

    @torch.no_grad()
    def forward_with_cache(self, batch: Batch, t: Tensor, cache: KVCache) -> Tensor:
        out, _ = self._cached_group(batch, t, cache, with_output=True)
        return out

    def _cached_group(self, batch: Batch, t: Tensor, cache: KVCache, with_output: bool):
        cfg = self.cfg
        if cfg.attention != "context_causal":
            raise ValueError(
                f"a KV-cache needs attention='context_causal' (got {cfg.attention!r}): in bidirectional "
                "mode history tokens see the new shot, so their K/V change every step; recompute instead")
        B, S = batch.shot_mask.shape
        g = cache.groups
        if B != 1 or t.shape != (1, S):
            raise ValueError(f"the KV-cache holds one scene with t (1, S); got a batch of {B}, t {tuple(t.shape)}")
        if with_output and g == 0:
            raise ValueError("the cache is empty; prefill at least the global prompt (groups=1) first")
        if g > S:
            raise ValueError(f"the cache holds {g - 1} shots but the scene has only {S}; pass the next shot")
        n_past = int((batch.vid_group[0] < g).sum())
        if n_past != cache.length:
            raise ValueError(f"the cache holds {cache.length} tokens but shots 1..{g - 1} of this scene have "
                             f"{n_past}; build it from the same history shots")
        heads, hd = cfg.heads, cfg.head_dim
        if g == 0:                                                            # the global prompt
            empty = batch.vid.new_zeros(1, heads, 0, hd, dtype=self.patch_embedding.weight.dtype)
            return None, [(empty, empty)] * len(self.blocks)

        # 1. Shot g's tokens, with positions from the whole scene.
        sel = batch.vid_group[0] == g                                         # (Lv,)
        x = self._embed_video(batch.vid[:, sel])                              # (1, Lv_g, D)
        cos, sin = self._rotary(batch)
        rotary = (cos[:, sel], sin[:, sel])
        shot = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)   # local shot 0
        ctx, valid = self._context(batch, [(0, g - 1)])
        temb, proj, ctx = self._time(t[:, g - 1 : g], ctx)
        ctx_mask = None if bool(valid.all()) else valid[:, None, None, :]

        # 2. Blocks: shot g attends [cached shots < g; itself].
        kvs = []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if cache.length else None
            x, kv = block(x, ctx, proj, shot, rotary, None, ctx_mask, past=past, keep_kv=True)
            kvs.append(kv)
        if not with_output:
            return None, kvs
        out = self._output(x, temb, shot)[0]                                  # (Lv_g, patch_dim)
        return unpatchify(out, batch.latent_shapes[0][g - 1], cfg.patch), kvs


# -- loading a folder ---------------------------------------------------------------------------
class WanFolderError(ValueError):
    """A pretrained folder that is not a usable Wan text-to-video checkpoint (names file and key)."""


def read_transformer_config(folder: str | Path) -> dict:
    """DIR/transformer/config.json of a diffusers Wan folder, checked; init args only."""
    folder = Path(folder)
    path = folder / "transformer" / "config.json"
    if not path.is_file():
        raise WanFolderError(f"{path} is missing: a Wan folder in the diffusers layout holds transformer/config.json "
                             "+ diffusion_pytorch_model*.safetensors (and optionally vae/, text_encoder/, tokenizer/)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WanFolderError(f"{path} is not valid JSON: {e}") from e
    name = config.get("_class_name")
    if name != "WanTransformer3DModel":
        raise WanFolderError(f"{path}: key _class_name is {name!r}, expected 'WanTransformer3DModel' "
                             "(this folder holds another architecture)")
    weights = sorted(path.parent.glob("diffusion_pytorch_model*.safetensors"))
    if not weights:
        raise WanFolderError(f"{path.parent} has no diffusion_pytorch_model*.safetensors (the transformer weights)")
    args = transformer_args(config)
    try:
        WanConfig(args)
    except ValueError as e:
        raise WanFolderError(f"{path}: {e}") from e
    return args


def check_weights(folder: str | Path, args: dict) -> None:
    """Every tensor of the transformer weights exists with the shape the config implies (meta build)."""
    from safetensors import safe_open

    directory = Path(folder) / "transformer"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in WanTransformer3DModel(**args).state_dict().items()}
    found: dict[str, tuple[tuple, Path]] = {}
    for file in sorted(directory.glob("diffusion_pytorch_model*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    found[key] = (tuple(f.get_slice(key).get_shape()), file)
        except Exception as e:  # noqa: BLE001 - a damaged file: say which
            raise WanFolderError(f"{file} cannot be read as safetensors: {e}") from e
    missing = sorted(set(expected) - set(found))
    if missing:
        raise WanFolderError(f"{directory}: weights lack key {missing[0]!r} (and {len(missing) - 1} more) that "
                             f"{directory / 'config.json'} implies")
    for key, (shape, file) in sorted(found.items()):
        if key in expected and shape != expected[key]:
            raise WanFolderError(f"{file}: key {key!r} has shape {shape} but {directory / 'config.json'} implies "
                                 f"{expected[key]} (a weights/config mismatch)")


def load_wan_transformer(folder: str | Path, dtype: torch.dtype = torch.float32, **options) -> WanLCT:
    """The scene model from DIR/transformer (checked first; never downloads).

    options: the lct fields of WanConfig (context_shots, attention, grad_checkpointing, text_len,
    text_features); the architecture comes from the folder.
    """
    args = read_transformer_config(folder)
    check_weights(folder, args)
    cfg = WanConfig(args, **options)
    base = WanTransformer3DModel.from_pretrained(Path(folder), subfolder="transformer", torch_dtype=dtype,
                                                 local_files_only=True)
    return WanLCT.wrap(base, cfg)


def build_wan(cfg: WanConfig, device: str | torch.device | None = None) -> WanLCT:
    """A randomly initialised scene model of `cfg` (device="meta" for counting parameters)."""
    with torch.device(device or "cpu"):
        return WanLCT.wrap(WanTransformer3DModel(**cfg.transformer), cfg)


def export_diffusers(model: WanLCT, directory: str | Path) -> Path:
    """DIR/transformer/ loadable by `WanTransformer3DModel.from_pretrained(DIR, subfolder="transformer")`."""
    directory = Path(directory)
    plain = WanTransformer3DModel(**model.cfg.transformer)
    plain.load_state_dict({k: v.detach().cpu() for k, v in model.native_state_dict().items()}, strict=True)
    plain.save_pretrained(directory / "transformer", safe_serialization=True)
    return directory


# -- LoRA (peft) ---------------------------------------------------------------------------------
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")   # attention + FFN


def add_lora(model: WanLCT, rank: int, alpha: float, targets: tuple[str, ...] = LORA_TARGETS) -> WanLCT:
    """LoRA adapters (peft, B zero-initialised: the model starts exactly at the base) on the `targets`
    linears of every block; everything else, base weights included, is frozen (the text projection,
    when there is one, stays trainable: it has no pre-trained weights)."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=_lora_regex(targets), init_lora_weights=True)
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("text_proj."))
    if not any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(f"no module of the Wan model matches the LoRA targets {targets}")
    return model


def _lora_regex(targets: tuple[str, ...]) -> str:
    """peft target regex: the named linears inside the attention and FFN of every block."""
    names = "|".join(t.replace(".", r"\.") for t in targets)
    return rf"blocks\.\d+\.((attn1|attn2)\.)?({names})"


@torch.no_grad()
def merge_lora(model: WanLCT) -> WanLCT:
    """Fold every LoRA adapter into its base linear (W += scale B A) and remove the adapters."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model
