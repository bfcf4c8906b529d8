import pytest
import torch

from model import LCTConfig, apply_rope, rope_frequencies, scene_position_ids


def test_single_shot_layout_matches_the_rule():
    # global prompt of 2 tokens, one shot: 3 text tokens, patch grid (F', H', W') = (2, 1, 2)
    ids = scene_position_ids([2, 3], [None, (2, 1, 2)])
    expected = [
        (0, 0, 0), (1, 1, 1),                      # global text, s_0 = 0
        (2, 2, 2), (3, 3, 3), (4, 4, 4),           # shot text, s_1 = 2
        (5, 5, 5), (5, 5, 6), (6, 5, 5), (6, 5, 6),  # video: s_1 + L_1 + (f, y, x)
    ]
    assert ids.dtype == torch.long and ids.tolist() == [list(e) for e in expected]


def test_next_shot_starts_after_largest_coordinate():
    ids = scene_position_ids([1, 2, 1], [None, (1, 4, 3), (2, 2, 2)])
    # global: 0; shot 1 starts at 1: text 1, 2; video 3 + (0..0, 0..3, 0..2) -> max 6
    # shot 2 starts at 7: text 7; video 8 + (0..1, 0..1, 0..1)
    assert ids[3:4].tolist() == [[3, 3, 3]]
    assert ids[1 + 2 + 12].tolist() == [7, 7, 7]
    assert ids[-1].tolist() == [9, 9, 9]


def _group_slices(text_lens, grids):
    sizes = [n + (0 if g is None else g[0] * g[1] * g[2]) for n, g in zip(text_lens, grids)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(s, s + n) for s, n in zip(starts, sizes)]


@pytest.mark.parametrize("seed", range(5))
def test_shots_never_share_coordinates(seed):
    g = torch.Generator().manual_seed(seed)
    S = int(torch.randint(1, 6, (1,), generator=g))
    text_lens = torch.randint(0, 6, (S + 1,), generator=g).tolist()
    grids = [None] + [tuple(torch.randint(1, 5, (3,), generator=g).tolist()) for _ in range(S)]
    ids = scene_position_ids(text_lens, grids)
    assert ids.shape == (sum(text_lens) + sum(a * b * c for a, b, c in grids[1:]), 3)
    ranges = [(int(ids[s].min()), int(ids[s].max())) for s in _group_slices(text_lens, grids) if ids[s].numel()]
    for (lo0, hi0), (lo1, hi1) in zip(ranges, ranges[1:]):
        assert lo1 == hi0 + 1  # disjoint, consecutive, in group order


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 text lengths but 1 grids"):
        scene_position_ids([1, 2], [None])


def _scores(q, k, ids, axes):
    cos, sin = rope_frequencies(ids, axes)
    return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)


@pytest.mark.parametrize("head_dim", [8, 32, 64])
def test_shifting_all_positions_keeps_scores(head_dim):
    axes = LCTConfig(width=head_dim * 2, heads=2).rope_axes
    g = torch.Generator().manual_seed(0)
    ids = scene_position_ids([3, 4, 2], [None, (2, 3, 3), (3, 2, 2)])[None]  # (1, L, 3)
    q = torch.randn(1, 2, ids.shape[1], head_dim, generator=g)
    k = torch.randn(1, 2, ids.shape[1], head_dim, generator=g)
    base = _scores(q, k, ids, axes)
    for shift in (1, 17, 1000):
        torch.testing.assert_close(_scores(q, k, ids + shift, axes), base, atol=1e-4, rtol=1e-4)
    # a shift along one axis only is also relative...
    torch.testing.assert_close(_scores(q, k, ids + torch.tensor([5, 0, -3]), axes), base, atol=1e-4, rtol=1e-4)
    # ...but moving a single token is not
    moved = ids.clone()
    moved[0, 0] += 3
    assert not torch.allclose(_scores(q, k, moved, axes), base, atol=1e-3)


@pytest.mark.parametrize("head_dim", [6, 16, 64, 128])
def test_each_axis_rotates_only_its_channel_slice(head_dim):
    axes = LCTConfig(width=head_dim * 2, heads=2).rope_axes
    x = torch.randn(1, 1, 1, head_dim)
    bounds = [0, axes[0], axes[0] + axes[1], head_dim]
    for a in range(3):
        ids = torch.zeros(1, 1, 3, dtype=torch.long)
        ids[..., a] = 7
        changed = (apply_rope(x, *rope_frequencies(ids, axes)) - x).abs()[0, 0, 0] > 1e-6
        inside = torch.zeros(head_dim, dtype=torch.bool)
        inside[bounds[a]:bounds[a + 1]] = True
        assert changed[inside].any() and not changed[~inside].any()


def test_zero_positions_are_identity_and_norm_is_kept():
    x = torch.randn(2, 3, 5, 16)
    ids = torch.zeros(2, 5, 3, dtype=torch.long)
    torch.testing.assert_close(apply_rope(x, *rope_frequencies(ids, (8, 4, 4))), x)
    ids = torch.randint(0, 50, (2, 5, 3))
    y = apply_rope(x, *rope_frequencies(ids, (8, 4, 4)))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
