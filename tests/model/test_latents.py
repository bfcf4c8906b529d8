import logging

import pytest
import torch

from model.latents import LatentCodec, LatentCodecConfig, PixelCodec, VAECodec, build_codec


def random_frames(f=3, h=16, w=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (f, h, w, 3), dtype=torch.uint8, generator=g)  # (F, H, W, 3)


# -- pixel codec --------------------------------------------------------------------------
def test_pixel_round_trip_is_exact_at_the_same_size():
    codec = build_codec(LatentCodecConfig())
    frames = random_frames()
    z = codec.encode(frames)
    assert z.shape == (3, 3, 16, 24) and z.dtype == torch.float32
    assert z.min() >= -1 and z.max() <= 1
    back = codec.decode(z)
    assert back.dtype == torch.uint8 and back.shape == frames.shape
    assert (back.int() - frames.int()).abs().max() <= 1


def test_pixel_float_batch_and_resize():
    codec = PixelCodec(size=(8, 12))
    video = torch.rand(2, 3, 4, 32, 48)  # (B, 3, F, H, W) in [0, 1]
    z = codec.encode(video)
    assert z.shape == (2, 3, 4, 8, 12) == (2, *codec.latent_shape(4, 32, 48))
    assert z.min() >= -1 and z.max() <= 1
    assert codec.decode(z).shape == (2, 4, 8, 12, 3)
    # resizing keeps a flat colour exactly, and the batched float path matches the uint8 one
    flat = torch.full((2, 32, 48, 3), 200, dtype=torch.uint8)
    assert (codec.decode(codec.encode(flat)) == 200).all()
    as_float = flat.permute(3, 0, 1, 2).unsqueeze(0).float() / 255
    torch.testing.assert_close(codec.encode(as_float)[0], codec.encode(flat))


def test_pixel_protocol_and_errors():
    codec = PixelCodec()
    assert isinstance(codec, LatentCodec)
    assert codec.latent_channels == 3 and codec.compression == (1, 1, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        codec.encode(torch.rand(1, 3, 2, 4, 4) * 2 - 1)
    with pytest.raises(ValueError, match="F, H, W, 3"):
        codec.encode(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(torch.zeros(2, 4, 4, 3, dtype=torch.int16))
    with pytest.raises(ValueError, match="channels"):
        codec.decode(torch.zeros(4, 2, 4, 4))
    with pytest.raises(ValueError, match="size"):
        LatentCodecConfig(size=(0, 4))


# -- Wan VAE codec (tiny, random) -------------------------------------------------------------
TINY_WAN = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0],
)


def save_tiny_wan(path, **overrides):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(**(TINY_WAN | overrides)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan"), scale_factor_temporal=2, scale_factor_spatial=4)


def test_vae_codec_shapes_compression_and_normalisation(vae_dir):
    codec = build_codec(LatentCodecConfig(kind="vae", path=str(vae_dir), size=(16, 16)))
    assert isinstance(codec, LatentCodec)
    assert codec.latent_channels == 4 and codec.compression == (2, 4, 4)

    frames = random_frames(f=5, h=24, w=20)  # resized to 16x16 first
    z = codec.encode(frames)
    assert z.shape == codec.latent_shape(5, 24, 20) == (4, 3, 4, 4)
    video = torch.rand(2, 3, 5, 16, 16)
    zb = codec.encode(video)
    assert zb.shape == (2, 4, 3, 4, 4)

    # latents are the posterior mean normalised as Wan pipelines do: (z - mean) / std
    raw = codec.vae.encode(video * 2 - 1).latent_dist.mode()
    mean, std = torch.tensor(TINY_WAN["latents_mean"]), torch.tensor(TINY_WAN["latents_std"])
    torch.testing.assert_close(zb, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))

    back = codec.decode(zb)
    assert back.shape == (2, 5, 16, 16, 3) and back.dtype == torch.uint8
    expected = ((codec.vae.decode(raw).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert (back.int() - expected.int()).abs().max() <= 1
    assert codec.decode(z).shape == (5, 16, 16, 3)
    # a single frame (image conditioning) is one latent frame
    assert codec.encode(random_frames(f=1, h=16, w=16)).shape == (4, 1, 4, 4)
    assert codec.decode(codec.encode(random_frames(f=1, h=16, w=16))).shape == (1, 16, 16, 3)
    assert not any(p.requires_grad for p in codec.parameters())


def test_vae_codec_errors_teach(vae_dir, tmp_path):
    codec = VAECodec(vae_dir)
    with pytest.raises(ValueError, match="1 \\+ 4k frames; got 4"):
        codec.encode(random_frames(f=4))
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(random_frames(f=1, h=10, w=16))
    with pytest.raises(ValueError, match="divisible"):
        VAECodec(vae_dir, size=(10, 16))
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAECodec(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs path"):
        LatentCodecConfig(kind="vae")


def test_vae_compression_comes_from_the_architecture(tmp_path, caplog):
    path = save_tiny_wan(tmp_path)  # declares the full-size defaults (4, 8) but compresses by (2, 4)
    with caplog.at_level(logging.WARNING, logger="model.latents"):
        codec = VAECodec(path)
    assert "architecture compresses" in caplog.text
    assert codec.compression == (2, 4, 4)
    assert codec.encode(random_frames(f=5, h=8, w=16)).shape == (4, 3, 2, 4)
