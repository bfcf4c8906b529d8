import pytest
import torch

from model import LCT, SamplerConfig, Scene, Shot, collate, sample, timesteps
from model.sampling import default_negative, negative_features, null_scene
from tests.model.test_lct import CFG, SHAPES, make_model, make_scene, run

FAST = SamplerConfig(steps=4, shift=3.0, cfg_scale=1.0, t_c=0.3, seed=7)


def shapes_of(latents):
    return [tuple(x.shape) for x in latents]


# --- KV-cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("history", [1, 2, 3])
def test_cache_equals_full_causal_forward(history):
    model = make_model("context_causal")
    grids = [(2, 4, 4), (3, 6, 4), (1, 4, 8), (2, 2, 6)][: history + 1]  # shots differ in size
    scene = make_scene(grids, seed=history)
    t = torch.tensor([[0.3] * history + [0.8]])                # history at t_c, new shot at t
    full = run(model, [scene], t)[0][-1]
    batch = collate([scene], CFG)
    cache = model.prefill(batch, t, groups=1 + history)        # global prompt + history shots
    assert cache.groups == 1 + history
    with torch.no_grad():
        cached = model.forward_with_cache(batch, t, cache)
    assert cached.shape == full.shape
    assert (cached - full).abs().max() <= 1e-5


def test_extending_the_cache_equals_prefilling_it():
    model = make_model("context_causal")
    scene = make_scene(SHAPES)
    batch, t = collate([scene], CFG), torch.tensor([[0.3, 0.3, 0.6]])
    grown = model.extend_cache(batch, t, model.prefill(batch, t, groups=1))
    direct = model.prefill(batch, t, groups=2)
    assert grown.length == direct.length == 3 + 4 + 8        # global text + shot 1 text + video
    for a, b in zip(grown.keys + grown.values, direct.keys + direct.values):
        torch.testing.assert_close(a, b)


def test_cache_teaching_errors():
    scene = make_scene(SHAPES[:2])
    batch, t = collate([scene], CFG), torch.tensor([[0.3, 0.6]])
    with pytest.raises(ValueError, match="needs attention='context_causal'"):
        make_model("bidirectional").prefill(batch, t, groups=1)
    model = make_model("context_causal")
    other = collate([make_scene(SHAPES[:2], global_len=5)], CFG)  # another global prompt
    with pytest.raises(ValueError, match="the cache holds 3 tokens but groups 0..0 of this scene have 5"):
        model.forward_with_cache(other, t, model.prefill(batch, t, groups=1))
    with pytest.raises(ValueError, match="the cache is empty"):
        model.forward_with_cache(batch, t, model.prefill(batch, t, groups=0))
    with pytest.raises(ValueError, match="the global prompt and 2 shots but the scene has only 2 shots"):
        model.extend_cache(batch, t, model.prefill(batch, t, groups=3))
    with pytest.raises(ValueError, match="one scene"):
        model.prefill(collate([scene, scene], CFG), t.repeat(2, 1), groups=1)


# --- sampler ----------------------------------------------------------------------------

def test_timestep_grid_and_shift():
    plain, shifted = timesteps(8), timesteps(8, shift=3.0)
    assert plain[0] == shifted[0] == 1 and plain[-1] == shifted[-1] == 0
    assert (shifted[1:] < shifted[:-1]).all()
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))
    assert (shifted[1:-1] > plain[1:-1]).all()                 # s > 1 stays longer at high noise


@pytest.mark.parametrize("mode", ["joint", "autoregressive"])
def test_deterministic_under_a_seed(mode):
    model = make_model("context_causal")
    scene = make_scene(SHAPES[:2])
    config = SamplerConfig(steps=2, cfg_scale=2.0, seed=1)
    a, b = sample(model, scene, config, mode), sample(model, scene, config, mode)
    c = sample(model, scene, SamplerConfig(steps=2, cfg_scale=2.0, seed=2), mode)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert not torch.allclose(x, z)


def test_conditioned_shot_at_t0_is_unchanged_and_conditions_the_others():
    model = make_model("bidirectional")
    scene = make_scene(SHAPES)
    clean = torch.randn(CFG.latent_channels, *SHAPES[1], generator=torch.Generator().manual_seed(5))
    config = SamplerConfig(steps=3, t_c=0.0, seed=3, cfg_scale=1.5)
    out = sample(model, scene, config, "conditioned", given={1: clean})
    assert torch.equal(out[1], clean)
    other = sample(model, scene, config, "conditioned", given={1: clean + 1.0})
    assert torch.equal(other[1], clean + 1.0)
    assert not torch.allclose(other[0], out[0], atol=1e-4)    # the free shots see the given one
    assert shapes_of(out) == [(CFG.latent_channels, *s) for s in SHAPES]


def test_conditioned_with_nothing_given_is_joint():
    model = make_model("bidirectional")
    scene = make_scene(SHAPES[:2])
    joint = sample(model, scene, FAST, "joint")
    for a, b in zip(sample(model, scene, FAST, "conditioned", given={}), joint):
        assert torch.equal(a, b)


def test_autoregressive_with_cache_equals_recompute():  # guided: text and null-text caches
    model = make_model("context_causal")
    scene = make_scene(SHAPES)
    config = SamplerConfig(steps=3, shift=2.0, cfg_scale=2.5, t_c=0.3, seed=11)
    cached = sample(model, scene, config, "autoregressive", use_cache=True)
    recomputed = sample(model, scene, config, "autoregressive", use_cache=False)
    assert shapes_of(cached) == [(CFG.latent_channels, *s) for s in SHAPES]
    for a, b in zip(cached, recomputed):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_autoregressive_bidirectional_recomputes():
    model = make_model("bidirectional")
    scene = make_scene(SHAPES[:2])
    a = sample(model, scene, FAST, "autoregressive", use_cache=True)   # no cache possible: ignored
    b = sample(model, scene, FAST, "autoregressive", use_cache=False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert shapes_of(a) == [(CFG.latent_channels, *s) for s in SHAPES[:2]]


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_one_shot_joint_equals_single_shot_autoregressive(attention):
    model = make_model(attention)
    scene = make_scene(SHAPES[:1])
    config = SamplerConfig(steps=3, cfg_scale=2.0, seed=4)
    joint = sample(model, scene, config, "joint")[0]
    for use_cache in (True, False):
        torch.testing.assert_close(sample(model, scene, config, "autoregressive", use_cache=use_cache)[0],
                                   joint, atol=1e-5, rtol=0)


def test_a_fresh_model_returns_the_initial_noise():  # v = 0 everywhere: nothing moves
    model = LCT(CFG).eval()
    scene = make_scene(SHAPES[:1])
    out = sample(model, scene, FAST)[0]
    noise = torch.randn(scene.shots[0].latent.shape, generator=torch.Generator().manual_seed(FAST.seed))
    assert torch.equal(out, noise)


def test_guidance_uses_a_null_text():
    scene = make_scene(SHAPES[:2])
    null = null_scene(scene)
    assert null.global_text.shape == (0, CFG.text_dim)
    assert all(s.text.shape == (0, CFG.text_dim) for s in null.shots)
    model = make_model("bidirectional")
    plain = sample(model, scene, FAST)
    guided = sample(model, scene, SamplerConfig(steps=4, shift=3.0, cfg_scale=3.0, seed=7))
    assert not torch.allclose(plain[0], guided[0], atol=1e-4)


def same_text_scene(grids, seed=0, length=5) -> tuple[Scene, torch.Tensor]:
    """A scene whose global prompt and shot prompts are one text (T, Dt), and that text."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(length, CFG.text_dim, generator=g)
    shots = [Shot(text=text, latent=torch.randn(CFG.latent_channels, *grid, generator=g)) for grid in grids]
    return Scene(global_text=text, shots=shots), text


@pytest.mark.parametrize("mode, attention", [("joint", "bidirectional"), ("autoregressive", "context_causal")])
def test_the_unconditional_branch_sees_the_negative_prompt(mode, attention):
    """negative == every prompt of the scene: the two branches agree, so any cfg gives cfg 1's output
    (with the null prompt instead, cfg changes it); another negative changes the output at cfg > 1 only."""
    model = make_model(attention)
    scene, text = same_text_scene(SHAPES[:2])
    other = torch.randn(3, CFG.text_dim, generator=torch.Generator().manual_seed(9))
    off, on = SamplerConfig(steps=2, cfg_scale=1.0, seed=3), SamplerConfig(steps=2, cfg_scale=4.0, seed=3)
    plain = sample(model, scene, off, mode)
    for a, b in zip(sample(model, scene, on, mode, negative=text), plain):
        assert torch.equal(a, b)
    assert not torch.allclose(sample(model, scene, on, mode)[1], plain[1], atol=1e-4)          # null prompt
    assert not torch.allclose(sample(model, scene, on, mode, negative=other)[1], plain[1], atol=1e-4)
    for a, b in zip(sample(model, scene, off, mode, negative=other), plain):                  # cfg 1: unused
        assert torch.equal(a, b)


def test_null_scene_with_a_negative_and_the_native_default():
    """(Wan's default, the empty string's features: tests/training/test_generate.py on a tiny Wan.)"""
    from model import TextEncoder

    scene = make_scene(SHAPES[:2])
    negative = torch.randn(2, CFG.text_dim)
    uncond = null_scene(scene, negative)
    assert torch.equal(uncond.global_text, negative) and all(torch.equal(s.text, negative) for s in uncond.shots)
    assert all(u.latent is s.latent for u, s in zip(uncond.shots, scene.shots))
    assert default_negative(CFG) is None
    text = TextEncoder()
    assert negative_features(CFG, text) is None                                        # the null prompt
    given = text(["blurry"])
    torch.testing.assert_close(negative_features(CFG, text, "blurry"), given.tokens[0][given.mask[0]])


def test_sampler_teaching_errors():
    model = make_model()
    scene = make_scene(SHAPES[:2])
    with pytest.raises(ValueError, match="mode must be one of"):
        sample(model, scene, FAST, "parallel")
    with pytest.raises(ValueError, match="need mode='conditioned'"):
        sample(model, scene, FAST, "joint", given={0: scene.shots[0].latent})
    with pytest.raises(ValueError, match=r"given shot 1: .* shape \(3, 3, 6, 4\), got \(3, 2, 4, 4\)"):
        sample(model, scene, FAST, "conditioned", given={1: scene.shots[0].latent})
    with pytest.raises(ValueError, match=r"given shot 2: the scene has shots 0..1"):
        sample(model, scene, FAST, "conditioned", given={2: scene.shots[0].latent})
    with pytest.raises(ValueError, match="t_c must be in"):
        SamplerConfig(t_c=1.0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        SamplerConfig(steps=0)
