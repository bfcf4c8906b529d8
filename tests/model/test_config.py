import dataclasses

import pytest
import torch

from model import LCT, PRESETS, LCTConfig


def n_params(cfg: LCTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in LCT(cfg).parameters())


def test_presets_exist_and_validate():
    assert {"lct-debug", "lct-small", "lct-3b"} <= set(PRESETS)
    for cfg in PRESETS.values():
        assert cfg.width % cfg.heads == 0 and sum(cfg.rope_axes) == cfg.head_dim


def test_debug_preset_is_tiny():
    assert n_params(PRESETS["lct-debug"]) < 2_000_000


def test_small_preset_fits_the_cpu_demo():
    cfg = PRESETS["lct-small"]
    assert n_params(cfg) < 20_000_000
    # 8 frames x 32x32 pixel latents must patchify exactly
    assert cfg.latent_channels == 3 and 8 % cfg.patch[0] == 0 and 32 % cfg.patch[1] == 0


def test_paper_preset_is_about_3b_params():
    assert 2.7e9 <= n_params(PRESETS["lct-3b"]) <= 3.3e9


@pytest.mark.parametrize("head_dim", [6, 8, 16, 24, 32, 48, 64, 72, 96, 128, 256])
def test_rope_axes_split(head_dim):
    cfg = LCTConfig(width=head_dim * 2, heads=2)
    t, h, w = cfg.rope_axes
    assert cfg.head_dim == head_dim
    assert t + h + w == head_dim
    assert all(a > 0 and a % 2 == 0 for a in (t, h, w))
    assert h == w and t >= h and t - h <= 4  # as balanced as even slices allow


def test_rope_axes_known_values():
    assert LCTConfig(width=128, heads=2).rope_axes == (24, 20, 20)
    assert LCTConfig(width=256, heads=2).rope_axes == (44, 42, 42)


def test_errors_name_the_offending_values():
    with pytest.raises(ValueError, match="width 100 is not divisible by heads 3"):
        LCTConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="head_dim .* = 5"):
        LCTConfig(width=20, heads=4)
    with pytest.raises(ValueError, match="'causal'"):
        LCTConfig(attention="causal")
    with pytest.raises(ValueError, match=r"\(1, 0, 2\)"):
        LCTConfig(patch=(1, 0, 2))
    with pytest.raises(ValueError, match="depth"):
        LCTConfig(depth=0)


def test_config_is_frozen_and_with_revalidates():
    cfg = PRESETS["lct-debug"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 8  # type: ignore[misc]
    assert cfg.with_(attention="context_causal").attention == "context_causal"
    with pytest.raises(ValueError):
        cfg.with_(heads=5)
