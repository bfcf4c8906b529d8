"""Typed configuration of the LCT model and its named presets.

One frozen dataclass holds every architectural choice; `PRESETS` names the sizes the
project uses (tiny for tests, small for the CPU demo, paper scale for real training).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .rope import rope_axes

AttentionMode = Literal["bidirectional", "context_causal"]
ATTENTION_MODES: tuple[str, ...] = ("bidirectional", "context_causal")


@dataclass(frozen=True)
class LCTConfig:
    width: int = 256                          # D, model width of both streams
    depth: int = 4                            # number of dual-stream MMDiT blocks
    heads: int = 4                            # attention heads; head_dim = width // heads
    patch: tuple[int, int, int] = (1, 4, 4)   # (p_t, p_h, p_w) latent patch size
    latent_channels: int = 3                  # C of the latent grid (3 = pixel codec)
    text_dim: int = 384                       # Dt of the text features (384 = all-MiniLM-L6-v2)
    context_shots: int = 9                    # S_max shots the model attends to at once (paper: <= 9)
    qk_norm: bool = True                      # RMS-normalise q and k per head
    attention: AttentionMode = "bidirectional"
    rope_theta: float = 10_000.0
    mlp_ratio: float = 4.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads", "latent_channels", "text_dim", "context_shots"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LCTConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(
                f"width {self.width} is not divisible by heads {self.heads}; "
                f"pick heads from the divisors of width (e.g. {_divisors(self.width)[-6:]})"
            )
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(
                f"head_dim = width // heads = {self.width} // {self.heads} = {self.head_dim}; "
                "3D RoPE needs an even head_dim >= 6 (one even slice per axis t, h, w)"
            )
        if len(self.patch) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch):
            raise ValueError(f"patch must be three positive ints (p_t, p_h, p_w), got {self.patch!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.mlp_ratio <= 0 or self.rope_theta <= 0:
            raise ValueError(
                f"mlp_ratio and rope_theta must be > 0, got mlp_ratio={self.mlp_ratio}, "
                f"rope_theta={self.rope_theta}"
            )
        axes = self.rope_axes
        assert sum(axes) == self.head_dim and all(a > 0 and a % 2 == 0 for a in axes), axes

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Channels of one head per (t, h, w) RoPE axis: `model.rope.rope_axes(head_dim)`."""
        return rope_axes(self.head_dim)

    @property
    def patch_dim(self) -> int:
        """Features of one video token before the input projection: C * p_t * p_h * p_w."""
        p_t, p_h, p_w = self.patch
        return self.latent_channels * p_t * p_h * p_w

    def with_(self, **changes) -> "LCTConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


PRESETS: dict[str, LCTConfig] = {
    # Tiny: unit tests and CI (< 2M parameters, runs in milliseconds).
    "lct-debug": LCTConfig(width=64, depth=2, heads=4, patch=(1, 2, 2), latent_channels=3),
    # CPU demo: a few hundred steps in minutes on 2 cores at 8 frames x 32x32 pixel latents
    # (patch 1x4x4 -> 8*8*8 = 512 video tokens per shot).
    "lct-small": LCTConfig(width=256, depth=4, heads=4, patch=(1, 4, 4), latent_channels=3),
    # The demo's consistency experiment (`lct demo`): 16x16 pixel shots at patch 2 (64 tokens a
    # frame), narrow enough that two models train in minutes on 2 cores.
    "lct-demo": LCTConfig(width=128, depth=4, heads=4, patch=(1, 2, 2), latent_channels=3),
    # Paper scale (~3B MMDiT): a 16-channel video VAE latent, T5-XXL text features (4096).
    "lct-3b": LCTConfig(
        width=1536, depth=36, heads=12, patch=(1, 2, 2), latent_channels=16, text_dim=4096
    ),
}
