"""The Wan backbone: a tiny random Wan saved by examples/make_tiny_wan.py and loaded from disk."""

import json
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from examples.make_tiny_wan import make_tiny_wan
from model import Scene, Shot, collate
from model.rope import rope_axes, shot_position_ids
from model.sampling import SamplerConfig, sample
from model.wan import WAN_PRESETS, WanConfig, WanFolderError, build_wan, load_wan_transformer
from tests._imports import assert_imports_without

ATOL = 1e-5


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = make_tiny_wan(tmp_path_factory.mktemp("tiny-wan") / "wan", seed=0)
    # random (non-zero) weights everywhere, saved back, so every path of the block matters
    base = WanTransformer3DModel.from_pretrained(path, subfolder="transformer")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(path / "transformer")
    return path


def load(wan_dir, attention="bidirectional", text_len=10):
    return load_wan_transformer(wan_dir, attention=attention, text_len=text_len).eval()


def make_scene(model, grids, seed=0, global_len=3, text_len=4) -> Scene:
    g = torch.Generator().manual_seed(seed)
    C, D = model.cfg.latent_channels, model.cfg.text_dim
    shots = [Shot(text=torch.randn(text_len + i, D, generator=g), latent=torch.randn(C, *grid, generator=g))
             for i, grid in enumerate(grids)]
    return Scene(global_text=torch.randn(global_len, D, generator=g), shots=shots)


SHAPES = [(2, 4, 4), (3, 6, 4), (1, 4, 8)]


def run(model, scenes, t):
    with torch.no_grad():
        return model(collate(scenes, model.cfg), t)


def test_one_shot_scene_equals_the_native_forward(wan_dir):
    model = load(wan_dir)
    native = WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer").eval()
    scene = make_scene(model, [(3, 6, 8)])
    t = torch.tensor([[0.37]])
    ours = run(model, [scene], t)[0][0]
    # Wan's input: the prompt features zero-padded to the prompt length, timestep t * 1000
    text = torch.cat([scene.global_text, scene.shots[0].text])
    text = torch.nn.functional.pad(text, (0, 0, 0, model.cfg.text_len - len(text)))
    with torch.no_grad():
        theirs = native(scene.shots[0].latent[None], torch.tensor([370.0]), text[None]).sample[0]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= ATOL
    assert theirs.abs().mean() > 1e-2                               # not a trivially zero output


def test_rope_split_matches_wan_at_several_head_dims():
    for head_dim in (12, 18, 24, 64, 96, 128):
        wan = WanRotaryPosEmbed(head_dim, (1, 2, 2), 16)
        assert rope_axes(head_dim) == (wan.t_dim, wan.h_dim, wan.w_dim)


def test_shot_positions_are_native_for_one_shot_and_disjoint_across_shots():
    one = shot_position_ids([(2, 3, 4)])
    f, y, x = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
    assert torch.equal(one, torch.stack([f, y, x], -1).reshape(-1, 3))
    ids = shot_position_ids([(2, 3, 4), (5, 2, 2)])
    first, second = ids[:24], ids[24:]
    assert int(second.min()) == 4                                   # s_2 = max(F', H', W') of shot 1
    assert not (set(map(tuple, first.tolist())) & set(map(tuple, second.tolist())))


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_scene_alone_equals_scene_padded_in_a_batch(wan_dir, attention):
    model = load(wan_dir, attention, text_len=6)
    small = make_scene(model, SHAPES[:1], seed=1, global_len=2)
    big = make_scene(model, SHAPES, seed=2, text_len=5)             # [global; shot] longer than text_len
    alone = run(model, [small], torch.tensor([[0.4]]))[0] + run(model, [big], torch.tensor([[0.1, 0.6, 0.8]]))[0]
    batched = run(model, [small, big], torch.tensor([[0.4, 0.123, 0.456], [0.1, 0.6, 0.8]]))
    for a, b in zip(alone, batched[0] + batched[1]):
        assert (a - b).abs().max() <= ATOL


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_set_attention_routes_self_attention_through_the_shot_block_processor(wan_dir, attention):
    """The sequence-parallel hook: Wan with model.attention's BlockAttention == Wan's own dense-mask path."""
    from model.attention import BlockAttention

    model = load(wan_dir, attention, text_len=6)
    scenes = [make_scene(model, SHAPES[:1], seed=1, global_len=2), make_scene(model, SHAPES, seed=2)]
    t = torch.tensor([[0.4, 0.123, 0.456], [0.1, 0.6, 0.8]])
    native = run(model, scenes, t)
    model.set_attention(BlockAttention())
    routed = run(model, scenes, t)
    for a, b in zip(native[0] + native[1], routed[0] + routed[1]):
        assert (a - b).abs().max() <= ATOL
    model.set_attention(None)
    assert model.attention is None and "attention" not in dict(model.named_modules())


def _change_shot(scene, j):
    shots = list(scene.shots)
    shots[j] = Shot(text=shots[j].text + 1.0, latent=shots[j].latent.flip(-1) + 0.5)
    return Scene(scene.global_text, shots)


def test_context_causal_later_shots_do_not_change_earlier_ones(wan_dir):
    model = load(wan_dir, "context_causal")
    scene = make_scene(model, SHAPES)
    t = torch.tensor([[0.2, 0.5, 0.9]])
    before, after = run(model, [scene], t)[0], run(model, [_change_shot(scene, 1)], t)[0]
    assert (before[0] - after[0]).abs().max() <= ATOL               # shot 0 untouched
    assert (before[1] - after[1]).abs().max() > 1e-3                # the changed shot changed
    assert (before[2] - after[2]).abs().max() > 1e-3                # and the later one sees it
    bidir = load(wan_dir, "bidirectional")                          # control: bidirectional leaks back
    assert (run(bidir, [scene], t)[0][0] - run(bidir, [_change_shot(scene, 1)], t)[0][0]).abs().max() > 1e-3


def test_shot_local_text_cross_attention(wan_dir):
    model = load(wan_dir, "bidirectional")
    scene = make_scene(model, SHAPES[:2])
    t = torch.tensor([[0.5, 0.5]])
    before = run(model, [scene], t)[0]
    shots = list(scene.shots)
    shots[1] = Shot(text=shots[1].text * -3.0, latent=shots[1].latent)   # only shot 1's prompt changes
    after = run(model, [Scene(scene.global_text, shots)], t)[0]
    # shot 0 is affected only through self-attention to shot 1's tokens, never through its own text;
    # make that visible by checking the context-causal model, where shot 0 cannot see shot 1 at all
    causal = load(wan_dir, "context_causal")
    c_before = run(causal, [scene], t)[0]
    c_after = run(causal, [Scene(scene.global_text, shots)], t)[0]
    assert (c_before[0] - c_after[0]).abs().max() <= ATOL
    assert (before[1] - after[1]).abs().max() > 1e-3


def test_per_shot_timesteps_modulate_their_own_shot(wan_dir):
    model = load(wan_dir, "context_causal")
    scene = make_scene(model, SHAPES[:2])
    a = run(model, [scene], torch.tensor([[0.3, 0.4]]))[0]
    b = run(model, [scene], torch.tensor([[0.3, 0.9]]))[0]
    assert (a[0] - b[0]).abs().max() <= ATOL and (a[1] - b[1]).abs().max() > 1e-3


def test_kv_cache_equals_recompute(wan_dir):
    model = load(wan_dir, "context_causal")
    scene = make_scene(model, SHAPES)
    batch = collate([scene], model.cfg)
    t = torch.tensor([[0.3, 0.3, 0.7]])
    full = run(model, [scene], t)[0]
    cache = model.prefill(batch, t, groups=1)                       # the global prompt: no tokens
    assert cache.length == 0
    for k in range(3):
        got = model.forward_with_cache(batch, t, cache)
        assert (got - full[k]).abs().max() <= ATOL
        cache = model.extend_cache(batch, t, cache)
    with pytest.raises(ValueError, match="context_causal"):
        load(wan_dir).prefill(batch, t, groups=1)


def test_sampler_runs_every_mode_and_cache_matches_recompute(wan_dir):
    model = load(wan_dir, "context_causal")
    scene = make_scene(model, SHAPES[:2])
    cfg = SamplerConfig(steps=3, shift=3.0, cfg_scale=2.0, seed=0)
    cached = sample(model, scene, cfg, mode="autoregressive")
    recomputed = sample(model, scene, cfg, mode="autoregressive", use_cache=False)
    for a, b in zip(cached, recomputed):
        assert (a - b).abs().max() <= 1e-4
    joint = sample(model, scene, cfg, mode="joint")
    given = sample(model, scene, cfg, mode="conditioned", given={0: torch.zeros_like(scene.shots[0].latent)})
    assert all(torch.isfinite(x).all() for x in joint + given)


def test_gradients_flow_and_checkpointing_matches(wan_dir):
    model = load(wan_dir).train()
    scene = make_scene(model, SHAPES[:2])
    batch, t = collate([scene], model.cfg), torch.tensor([[0.3, 0.6]])
    loss = model(batch, t, packed=True).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == sum(1 for _ in model.parameters())
    model.zero_grad()
    model.grad_checkpointing = True
    model(batch, t, packed=True).square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad - grads[n]).abs().max() <= 1e-5, n


def test_text_projection_when_features_are_not_umt5(wan_dir):
    model = load_wan_transformer(wan_dir, text_features=384, text_len=8).eval()
    assert model.cfg.text_dim == 384 and model.text_proj.out_features == 16
    scene = make_scene(model, SHAPES[:1])
    assert torch.isfinite(run(model, [scene], torch.tensor([[0.5]]))[0][0]).all()
    assert "text_proj.weight" not in model.native_state_dict()


@pytest.mark.parametrize("name, published", [("wan2.1-t2v-1.3b", 1.42e9), ("wan2.1-t2v-14b", 14.29e9)])
def test_presets_match_published_parameter_counts(name, published):
    model = build_wan(WAN_PRESETS[name], device="meta")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published <= 0.03, count


def test_bad_folders_name_the_file_and_key(wan_dir, tmp_path):
    with pytest.raises(WanFolderError, match="transformer/config.json is missing"):
        load_wan_transformer(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(wan_dir / "transformer", other / "transformer")
    cfg = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps(cfg | {"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(WanFolderError, match="_class_name"):
        load_wan_transformer(other)
    (other / "transformer" / "config.json").write_text(json.dumps(cfg | {"ffn_dim": 40}))
    with pytest.raises(WanFolderError, match=r"key 'blocks\.0\.ffn.*shape"):
        load_wan_transformer(other)
    (other / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WanFolderError, match="no diffusion_pytorch_model"):
        load_wan_transformer(other)


def test_wan_module_imports_without_ray_deepspeed_prefect():
    assert_imports_without(("ray", "deepspeed", "prefect"), "import model.wan")


def test_lora_starts_at_the_base_trains_only_adapters_and_merges_exactly(wan_dir):
    from model.wan import add_lora, merge_lora

    model = load(wan_dir)
    scene = make_scene(model, SHAPES[:2])
    batch, t = collate([scene], model.cfg), torch.tensor([[0.3, 0.6]])
    with torch.no_grad():
        base = model(batch, t, packed=True)
    add_lora(model, rank=2, alpha=4.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".ffn.net.0.proj.lora_A" in n for n in trainable) and any(".attn2.to_out.0.lora_B" in n for n in trainable)
    with torch.no_grad():
        assert (model(batch, t, packed=True) - base).abs().max() == 0       # B = 0: exactly the base model
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
        tuned = model(batch, t, packed=True)
    assert (tuned - base).abs().max() > 1e-3
    merge_lora(model)
    assert not any("lora_" in n for n in model.state_dict())
    assert set(model.native_state_dict()) == set(WanTransformer3DModel.from_pretrained(
        wan_dir, subfolder="transformer").state_dict())
    with torch.no_grad():
        assert (model(batch, t, packed=True) - tuned).abs().max() <= ATOL
