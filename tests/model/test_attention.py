"""Shot-block attention (model/attention.py) == the dense (B, 1, L, L) mask it replaced."""

import pytest
import torch
import torch.nn.functional as F

from model import LCT, PRESETS, Scene, Shot, collate
from torch.utils._python_dispatch import TorchDispatchMode

from model.attention import attend, plan_attention

CFG = PRESETS["lct-debug"]


def dense_mask(group: torch.Tensor, mode: str) -> torch.Tensor:
    """The mask model/lct.py built before shot-block attention: (B, 1, L, L) bool, True = may attend."""
    q, k = group[:, :, None], group[:, None, :]
    allowed = k >= 0
    if mode == "context_causal":
        allowed = allowed & (k <= q)
    eye = torch.eye(group.shape[1], dtype=torch.bool)
    return (allowed | eye)[:, None]


class DenseAttention:
    """The old path as an attention processor: SDPA with the dense boolean mask."""

    def plan(self, group, mode):
        return dense_mask(group, mode)

    def __call__(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SquareTensors(TorchDispatchMode):
    """Counts every tensor an op creates whose last two dims are both L (an L x L mask or score)."""

    def __init__(self, length: int):
        super().__init__()
        self.length, self.found = length, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[-2:] == (self.length, self.length):
                self.found.append((str(func), tuple(x.shape)))
        return out


def make_model(attention: str) -> LCT:
    torch.manual_seed(0)
    model = LCT(CFG.with_(attention=attention))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))             # leave adaLN-Zero: every path matters
    return model


def make_scene(grids, seed, global_len=3, text_len=4) -> Scene:
    g = torch.Generator().manual_seed(seed)
    C, D = CFG.latent_channels, CFG.text_dim
    shots = [Shot(text=torch.randn(text_len + i, D, generator=g), latent=torch.randn(C, *grid, generator=g))
             for i, grid in enumerate(grids)]
    return Scene(global_text=torch.randn(global_len, D, generator=g), shots=shots)


def forward_and_grads(model: LCT, batch, t):
    """Real video-token outputs (N, patch_dim) and the gradients of a weighted sum of them.

    Padding outputs are not compared: the old mask let a padding query see every real key in
    bidirectional mode, the block plan lets it see only itself; nothing reads them (unpack and
    the loss take real tokens only) and padding keys are never seen, so real tokens are unaffected.
    """
    model.zero_grad()
    out = model(batch, t, packed=True)[batch.vid_group >= 0]  # (N real, patch_dim)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["bidirectional", "context_causal"])
@pytest.mark.parametrize("padded", [False, True])
def test_block_attention_equals_the_dense_mask(attention, padded):
    """Outputs of real tokens and every gradient match the dense path to 1e-5."""
    model = make_model(attention)
    scenes = [make_scene([(2, 4, 4), (1, 6, 4), (3, 2, 4)], seed=1)]
    t = torch.tensor([[0.2, 0.5, 0.9]])
    if padded:  # a shorter scene with fewer shots pads text, video and shots
        scenes.append(make_scene([(1, 4, 4)], seed=2, global_len=5, text_len=2))
        t = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]])
    batch = collate(scenes, model.cfg)
    L = batch.txt_group.shape[1] + batch.vid_group.shape[1]
    with SquareTensors(L) as block_square:
        out, grads = forward_and_grads(model, batch, t)   # the model's own BlockAttention
    model.set_attention(DenseAttention())
    with SquareTensors(L) as dense_square:
        ref, ref_grads = forward_and_grads(model, batch, t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=0, msg=name)
    assert block_square.found == []                       # nothing L x L, forward or backward
    assert dense_square.found or (attention, padded) == ("bidirectional", False)  # the probe works


def test_context_causal_sees_only_earlier_groups():
    """Changing a later group's keys/values leaves earlier groups' outputs alone (and vice versa)."""
    group = torch.tensor([[0, 0, 1, 1, 2, -1, 1, 2, 2, 0]])  # unsorted on purpose, one padding token
    plan = plan_attention(group, "context_causal")
    q, k, v = (torch.randn(1, 2, 10, 8) for _ in range(3))
    out = attend(q, k, v, plan)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(
        q, k, v, attn_mask=dense_mask(group, "context_causal")), atol=1e-6, rtol=0)
    k2, v2 = k.clone(), v.clone()
    later = group[0] == 2
    k2[..., later, :] += 3.0
    v2[..., later, :] -= 3.0
    out2 = attend(q, k2, v2, plan)
    earlier = (group[0] >= 0) & (group[0] < 2)
    torch.testing.assert_close(out2[..., earlier, :], out[..., earlier, :])
    assert not torch.allclose(out2[..., later, :], out[..., later, :])
    torch.testing.assert_close(out[..., 5, :], v[..., 5, :])  # the padding query sees only itself


def test_unpadded_bidirectional_is_one_plain_sdpa():
    plan = plan_attention(torch.tensor([[0, 1, 1, 2]]), "bidirectional")
    assert plan.scenes is None


def test_unknown_mode_teaches():
    with pytest.raises(ValueError, match="bidirectional.*context_causal"):
        plan_attention(torch.zeros(1, 3, dtype=torch.long), "causal")
