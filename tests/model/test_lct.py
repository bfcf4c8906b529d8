
import pytest
import torch

from model import LCT, PRESETS, Scene, Shot, collate, scene_position_ids
from tests._imports import assert_imports_without

CFG = PRESETS["lct-debug"]


def make_model(attention="bidirectional", seed=0, **changes) -> LCT:
    """Debug-size model with random (non adaLN-Zero) weights, so every path matters."""
    torch.manual_seed(seed)
    model = LCT(CFG.with_(attention=attention, **changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def make_scene(grids, seed=0, global_len=3, text_len=4) -> Scene:
    g = torch.Generator().manual_seed(seed)
    C, D = CFG.latent_channels, CFG.text_dim
    shots = [
        Shot(text=torch.randn(text_len + i, D, generator=g), latent=torch.randn(C, *grid, generator=g))
        for i, grid in enumerate(grids)
    ]
    return Scene(global_text=torch.randn(global_len, D, generator=g), shots=shots)


SHAPES = [(2, 4, 4), (3, 6, 4), (1, 4, 8)]  # shots differ in F, H and W


def run(model, scenes, t):
    with torch.no_grad():
        return model(collate(scenes, model.cfg), t)


def test_output_has_the_latent_shapes():
    model = make_model()
    v = run(model, [make_scene(SHAPES)], torch.tensor([[0.2, 0.5, 0.9]]))
    assert [tuple(x.shape) for x in v[0]] == [(CFG.latent_channels, *s) for s in SHAPES]
    assert all(torch.isfinite(x).all() for x in v[0])


def test_fresh_model_predicts_zero_velocity():  # adaLN-Zero + zero output layer
    model = LCT(CFG).eval()
    v = run(model, [make_scene(SHAPES[:2])], torch.tensor([[0.3, 0.7]]))
    assert all((x == 0).all() for x in v[0])


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
def test_padding_in_a_batch_does_not_change_outputs(attention):
    model = make_model(attention)
    small, big = make_scene(SHAPES[:1], seed=1, global_len=2), make_scene(SHAPES, seed=2, text_len=6)
    t_small, t_big = torch.tensor([[0.4]]), torch.tensor([[0.1, 0.6, 0.8]])
    alone_small, alone_big = run(model, [small], t_small)[0], run(model, [big], t_big)[0]
    t = torch.tensor([[0.4, 0.123, 0.456], [0.1, 0.6, 0.8]])  # small's padded shots get junk t
    batched = run(model, [small, big], t)
    for a, b in zip(alone_small + alone_big, batched[0] + batched[1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_masked_text_tokens_are_ignored():
    model = make_model()
    scene = make_scene(SHAPES[:2])
    mask = torch.tensor([True, True, True, False, False])
    scene.shots[1].text, scene.shots[1].text_mask = torch.randn(5, CFG.text_dim), mask
    t = torch.tensor([[0.3, 0.6]])
    before = run(model, [scene], t)[0]
    scene.shots[1].text[~mask] = 100.0
    after = run(model, [scene], t)[0]
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a)


def _change_shot(scene: Scene, j: int) -> Scene:
    shots = list(scene.shots)
    shots[j] = Shot(text=shots[j].text + 1.0, latent=shots[j].latent.flip(-1) + 0.5)
    return Scene(global_text=scene.global_text, shots=shots)


@pytest.mark.parametrize("j", [1, 2])
def test_context_causal_earlier_shots_ignore_later_ones(j):
    model = make_model("context_causal")
    scene = make_scene(SHAPES)
    t = torch.tensor([[0.2, 0.5, 0.9]])
    t_changed = t.clone()
    t_changed[0, j] = 0.05
    base, changed = run(model, [scene], t)[0], run(model, [_change_shot(scene, j)], t_changed)[0]
    for i in range(j):
        torch.testing.assert_close(changed[i], base[i], atol=1e-6, rtol=0)
    assert not torch.allclose(changed[j], base[j], atol=1e-4)
    # and the first shot of a causal scene is the single-shot model on that shot alone
    single = run(model, [Scene(scene.global_text, scene.shots[:1])], t[:, :1])[0][0]
    torch.testing.assert_close(single, base[0], atol=1e-5, rtol=0)


def test_bidirectional_earlier_shots_see_later_ones():
    model = make_model("bidirectional")
    scene = make_scene(SHAPES)
    t = torch.tensor([[0.2, 0.5, 0.9]])
    base, changed = run(model, [scene], t)[0], run(model, [_change_shot(scene, 2)], t)[0]
    assert not torch.allclose(changed[0], base[0], atol=1e-4)


def test_each_shot_is_modulated_by_its_own_timestep():
    model = make_model("context_causal")
    scene = make_scene(SHAPES[:2])
    base = run(model, [scene], torch.tensor([[0.2, 0.5]]))[0]
    other = run(model, [scene], torch.tensor([[0.2, 0.8]]))[0]
    torch.testing.assert_close(other[0], base[0])
    assert not torch.allclose(other[1], base[1], atol=1e-4)


def test_gradient_checkpointing_gives_the_same_outputs_and_grads():
    model = make_model().train()
    batch = collate([make_scene(SHAPES[:2]), make_scene(SHAPES[1:], seed=3)], CFG)
    t = torch.tensor([[0.3, 0.6], [0.2, 0.9]])
    results = []
    for flag in (False, True):
        model.zero_grad()
        model.grad_checkpointing = flag
        v = model(batch, t)
        loss = sum((x ** 2).mean() for scene in v for x in scene)
        loss.backward()
        results.append((torch.cat([x.flatten() for s in v for x in s]),
                        [p.grad.clone() for p in model.parameters()]))
    (v0, g0), (v1, g1) = results
    torch.testing.assert_close(v1, v0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a)


def test_every_parameter_gets_a_gradient():
    model = make_model().train()
    v = model(collate([make_scene(SHAPES[:2])], CFG), torch.tensor([[0.3, 0.6]]))
    sum(x.square().mean() for x in v[0]).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_collate_uses_the_scene_position_ids():
    scene = make_scene(SHAPES[:2])
    batch = collate([scene], CFG)
    grids = [tuple(n // p for n, p in zip(s, CFG.patch)) for s in SHAPES[:2]]
    ids = scene_position_ids([3, 4, 5], [None, *grids])
    is_text = torch.tensor([True] * 3 + [True] * 4 + [False] * 8 + [True] * 5 + [False] * 18)
    torch.testing.assert_close(batch.ids[0], torch.cat([ids[is_text], ids[~is_text]]))


def test_teaching_errors():
    model = make_model()
    bad = make_scene([(2, 5, 4)])
    with pytest.raises(ValueError, match=r"\(3, 2, 5, 4\) is not divisible by the patch"):
        collate([bad], CFG)
    batch = collate([make_scene(SHAPES[:2])], CFG)
    with pytest.raises(ValueError, match=r"t must be \(B, S\) = \(1, 2\)"):
        model(batch, torch.zeros(2))
    with pytest.raises(ValueError, match=r"must be \(T, 384\), got \(2, 7\)"):
        collate([Scene(torch.randn(2, 7), make_scene(SHAPES[:1]).shots)], CFG)


def test_import_without_ray_deepspeed_prefect():
    assert_imports_without(("ray", "deepspeed", "prefect"), "import model\nfrom model import LCT, LCTConfig, PRESETS\n"
                           "import model.config, model.rope, model.layers, model.lct, model.text, model.latents")
