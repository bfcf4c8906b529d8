"""Latent codecs: video <-> the latent grid the LCT model denoises.

    codec = build_codec(LatentCodecConfig(kind="pixel", size=(32, 32)))
    z = codec.encode(frames)     # (F, H, W, 3) uint8       -> (C, F', H', W') float32
    z = codec.encode(video)      # (B, 3, F, H, W) in [0, 1] -> (B, C, F', H', W') float32
    frames = codec.decode(z)     # (C, F', H', W')          -> (F, H, W, 3) uint8
                                 # (B, C, F', H', W')       -> (B, F, H, W, 3) uint8

Both codecs resize the video to `size` (H, W) first (None keeps the input size) and
share one protocol (`LatentCodec`): `latent_channels`, `compression` = (t, h, w) — video
frames/height/width per latent frame/row/column — `latent_shape`, `encode`, `decode`.

- "pixel" (default): the latent is the resized video scaled to [-1, 1] (C=3, no
  compression). `decode` inverts it exactly up to uint8 rounding.
- "vae": a diffusers Wan video VAE (`AutoencoderKLWan`) from a local dir; latents are the
  posterior mean normalised per channel as Wan pipelines do, (z - latents_mean) / latents_std.
  Frame counts must be 1 + 4k (the VAE encodes the first frame alone, then chunks of 4);
  F' = 1 + (F - 1) / t.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentCodecConfig:
    kind: Literal["pixel", "vae"] = "pixel"
    size: tuple[int, int] | None = None  # (H, W) the video is resized to before encoding; None = keep
    path: str | None = None  # kind="vae": local diffusers dir (config.json + weights) of an AutoencoderKLWan
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # VAE compute dtype; latents are returned as float32

    def __post_init__(self) -> None:
        if self.kind not in ("pixel", "vae"):
            raise ValueError(f"LatentCodecConfig.kind={self.kind!r}; expected 'pixel' or 'vae'")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"LatentCodecConfig.size={self.size}; expected (H, W) with positive ints, or None")
        if self.kind == "vae" and self.path is None:
            raise ValueError("LatentCodecConfig(kind='vae') needs path=<local diffusers dir of an AutoencoderKLWan>")


@runtime_checkable
class LatentCodec(Protocol):
    latent_channels: int
    compression: tuple[int, int, int]  # (t, h, w)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...
    def encode(self, video: Tensor) -> Tensor: ...
    def decode(self, latents: Tensor) -> Tensor: ...


def build_codec(cfg: LatentCodecConfig) -> LatentCodec:
    return PixelCodec(cfg.size) if cfg.kind == "pixel" else VAECodec(cfg.path, cfg.size, getattr(torch, cfg.dtype))


# -- shared video plumbing ----------------------------------------------------------------
def to_unit_video(video: Tensor) -> tuple[Tensor, bool]:
    """(F, H, W, 3) uint8 or (B, 3, F, H, W) float in [0, 1] -> ((B, 3, F, H, W) float32 in [0, 1], batched)."""
    if video.dtype == torch.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"a uint8 video must be (F, H, W, 3) frames; got shape {tuple(video.shape)}")
        return video.permute(3, 0, 1, 2).unsqueeze(0).float() / 255.0, False  # (1, 3, F, H, W)
    if video.is_floating_point():
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"a float video must be (B, 3, F, H, W) in [0, 1]; got shape {tuple(video.shape)}")
        lo, hi = video.min().item(), video.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"a float video must have values in [0, 1]; got [{lo:.3f}, {hi:.3f}] (uint8 frames: pass them as uint8)")
        return video.float(), True
    raise TypeError(f"video must be uint8 (F, H, W, 3) or float (B, 3, F, H, W); got dtype {video.dtype}")


def resize_video(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """(B, C, F, H, W) -> (B, C, F, *size), antialiased bilinear per frame; no-op at the same size."""
    B, C, Fr, H, W = x.shape
    if size is None or (H, W) == tuple(size):
        return x
    frames = x.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, H, W)  # (B*F, C, H, W)
    frames = F.interpolate(frames, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return frames.reshape(B, Fr, C, *size).permute(0, 2, 1, 3, 4)  # (B, C, F, H', W')


def to_uint8_frames(x: Tensor, batched: bool) -> Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8, or (F, H, W, 3) when not batched."""
    frames = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    return frames if batched else frames[0]


def _batched_latents(latents: Tensor, channels: int) -> tuple[Tensor, bool]:
    if latents.ndim == 4:
        latents, batched = latents.unsqueeze(0), False
    elif latents.ndim == 5:
        batched = True
    else:
        raise ValueError(f"latents must be (C, F, H, W) or (B, C, F, H, W); got shape {tuple(latents.shape)}")
    if latents.shape[1] != channels:
        raise ValueError(f"latents have {latents.shape[1]} channels; this codec has {channels}")
    return latents, batched


# -- pixel space ----------------------------------------------------------------------------
class PixelCodec(nn.Module):
    """Latents = the resized video in [-1, 1]; the default, needs no weights."""

    latent_channels = 3
    compression = (1, 1, 1)

    def __init__(self, size: tuple[int, int] | None = None):
        super().__init__()
        self.size = tuple(size) if size is not None else None

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        h, w = self.size or (height, width)
        return (3, frames, h, w)

    def encode(self, video: Tensor) -> Tensor:
        x, batched = to_unit_video(video)  # (B, 3, F, H, W) in [0, 1]
        z = resize_video(x, self.size) * 2 - 1  # (B, 3, F, H', W') in [-1, 1]
        return z if batched else z[0]

    def decode(self, latents: Tensor) -> Tensor:
        z, batched = _batched_latents(latents, 3)
        return to_uint8_frames(z, batched)


# -- diffusers Wan VAE --------------------------------------------------------------------------
class VAECodec(nn.Module):
    """A frozen diffusers `AutoencoderKLWan` loaded from a local dir (never downloads)."""

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"VAE dir {path} has no config.json (expected a diffusers AutoencoderKLWan dir, e.g. <Wan repo>/vae)")
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as e:
            raise ImportError("LatentCodecConfig(kind='vae') needs diffusers (pip install 'diffusers==0.39.*')") from e
        class_name = json.loads((path / "config.json").read_text()).get("_class_name")
        if class_name not in (None, "AutoencoderKLWan"):
            raise ValueError(f"VAE at {path} is a {class_name}; only AutoencoderKLWan is supported")
        self.vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        self.vae.requires_grad_(False).eval()
        cfg = self.vae.config
        # compression from the architecture (the config's scale_factor_* are only declared values)
        t = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        s = 2 ** (len(cfg.dim_mult) - 1) * (cfg.patch_size or 1)
        if (cfg.scale_factor_temporal, cfg.scale_factor_spatial) != (t, s):
            log.warning(
                "VAE %s declares scale_factor_temporal=%s, scale_factor_spatial=%s but its architecture compresses by t=%d, h=w=%d; using the latter",
                path, cfg.scale_factor_temporal, cfg.scale_factor_spatial, t, s,
            )
        if 4 % t:
            raise ValueError(f"VAE at {path} compresses time by {t}; the Wan VAE encodes chunks of 4 frames, so t must divide 4")
        self.compression = (t, s, s)
        self.latent_channels = int(cfg.z_dim)
        if size is not None and (size[0] % s or size[1] % s):
            raise ValueError(f"size={tuple(size)} is not divisible by the VAE's spatial compression {s}")
        self.size = tuple(size) if size is not None else None
        self.dtype = dtype
        if len(cfg.latents_mean) != self.latent_channels or len(cfg.latents_std) != self.latent_channels:
            raise ValueError(f"VAE at {path}: latents_mean/latents_std need z_dim={self.latent_channels} values each")
        self.register_buffer("mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VAECodec":
        return super().train(False)  # frozen: always in eval mode

    def _check_frames(self, frames: int) -> None:
        if frames < 1 or (frames - 1) % 4:
            below = 1 + 4 * max(0, (frames - 1) // 4)
            raise ValueError(f"the Wan VAE needs 1 + 4k frames; got {frames} (e.g. {below} or {below + 4})")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self._check_frames(frames)
        t, s, _ = self.compression
        h, w = self.size or (height, width)
        if h % s or w % s:
            raise ValueError(f"video size {(h, w)} is not divisible by the VAE's spatial compression {s}")
        return (self.latent_channels, 1 + (frames - 1) // t, h // s, w // s)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        x, batched = to_unit_video(video)  # (B, 3, F, H, W) in [0, 1]
        x = resize_video(x, self.size)
        self.latent_shape(*x.shape[2:])  # validates frames and size
        x = (x * 2 - 1).to(device=self.mean.device, dtype=self.dtype)  # the VAE expects [-1, 1]
        z = self.vae.encode(x).latent_dist.mode().float()  # (B, z_dim, F', H/s, W/s), the posterior mean
        z = (z - self.mean) / self.std
        return z if batched else z[0]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z, batched = _batched_latents(latents, self.latent_channels)
        z = (z.to(self.mean.device, torch.float32) * self.std + self.mean).to(self.dtype)
        x = self.vae.decode(z).sample  # (B, 3, F, H, W) in [-1, 1]
        return to_uint8_frames(x, batched)
