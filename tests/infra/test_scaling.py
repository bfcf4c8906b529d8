"""infra/SCALING.md agrees with the code: the lct-3b figures it quotes are recomputed here from
`model/` and `training.metrics`, so a change of the preset, the FLOPs formula or the block's
saved activations makes this test fail until the document is updated."""

import math
import re
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch

from model import LCT, PRESETS
from training.metrics import GPU_PEAK_BF16, train_step_flops

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "infra" / "SCALING.md").read_text()
CFG = PRESETS["lct-3b"]

VAE = (4, 8, 8)          # Wan VAE compression (t, h, w)
SIDE = 480               # 480x480-area frames
TEXT_PER_PROMPT = 256    # T5 tokens per prompt (assumption of the doc)
FRAMES = 97              # frames per shot of the ~180K-token scene
MFU = 0.40
A_BLK = 113_887          # bytes saved per token by one MMDiTBlock (bf16), as quoted in the doc
GB = 1e9


def tokens_per_latent_frame() -> int:
    return (SIDE // VAE[1] // CFG.patch[1]) * (SIDE // VAE[2] // CFG.patch[2])


def latent_frames(frames: int) -> int:
    return 1 + (frames - 1) // VAE[0]


def scene(shots: int, frames: int = FRAMES) -> tuple[int, int]:
    """(Lt, Lv) of a scene of `shots` shots."""
    return (shots + 1) * TEXT_PER_PROMPT, shots * latent_frames(frames) * tokens_per_latent_frame()


def flops(shots: int, frames: int = FRAMES) -> int:
    lt, lv = scene(shots, frames)
    batch = NS(txt=NS(shape=(1, lt, CFG.text_dim)), vid=NS(shape=(1, lv, CFG.patch_dim)),
               pooled=NS(shape=(1, 1 + shots, CFG.text_dim)))
    return train_step_flops(CFG, batch)


def sci(x: float) -> str:
    return f"{x:.2e}".replace("e+", "e")


def row(label: str, section: str = "") -> list[str]:
    """Cells of the first table row whose first cell is `label` or starts with `label` + " " (bold dropped)."""
    for line in DOC[DOC.index(section):].splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and (cells[0] == label or cells[0].startswith(label + " ")):
            return cells
    raise AssertionError(f"no table row starting with {label!r} in SCALING.md")


@pytest.fixture(scope="module")
def psi() -> tuple[int, int]:
    with torch.device("meta"):
        model = LCT(CFG)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.blocks[0].parameters())


def test_parameter_count(psi):
    total, block = psi
    assert f"{total:,}" in DOC and f"{block:,}" in DOC
    assert f"16Ψ = {16 * total / GB:.2f} GB" in DOC


def test_token_arithmetic():
    assert f"= {tokens_per_latent_frame()}" in DOC.replace("**", "")
    for frames in (81, 97, 161, 241):
        per_shot = latent_frames(frames) * tokens_per_latent_frame()
        assert f"| {frames} | {latent_frames(frames)} | {per_shot:,} | {8 * per_shot:,} |" in DOC.replace("**", "")
    lt, lv = scene(8)
    assert f"L = {lv:,} + {lt:,} = {lt + lv:,}" in DOC.replace("**", "")
    assert f"{sum(scene(9)):,}" in DOC


def test_flops_table():
    for shots in (1, 5, 8, 9):
        cells = row(str(shots), section="## 4.")
        f = flops(shots)
        assert cells[1] == f"{sum(scene(shots)):,}"
        assert cells[2] == sci(f)
        assert cells[4] == f"{f / (GPU_PEAK_BF16['H100'] * MFU):.1f}"
        assert cells[5] == f"{f / (GPU_PEAK_BF16['A100'] * MFU):.1f}"
        attn = 3 * 2 * CFG.depth * 2 * sum(scene(shots)) ** 2 * CFG.width
        assert cells[3] == f"{attn / f:.0%}"


def test_zero_table(psi):
    total, _ = psi
    n = [int(x) for x in row("GPUs N")[1:]]
    formulas = {"ZeRO-1": lambda k: 4 * total + 12 * total / k, "ZeRO-2": lambda k: 2 * total + 14 * total / k,
                "ZeRO-3": lambda k: 16 * total / k}
    for stage, bytes_ in formulas.items():
        assert row(f"{stage} GB")[1:] == [f"{bytes_(k) / GB:.2f}" for k in n], stage


def test_ulysses_degrees_divide_heads():
    degrees = [p for p in range(2, CFG.heads + 1) if CFG.heads % p == 0]
    assert f"P ∈ {{{', '.join(map(str, degrees))}}}" in DOC


def test_activation_rows_and_mask():
    D, depth = CFG.width, CFG.depth
    for label, shots, ckpt in (("182,304 (8 shots), no checkpointing", 8, False),
                               ("182,304 (8 shots), checkpointed", 8, True), ("114,036 (5 shots), checkpointed", 5, True)):
        L = sum(scene(shots))
        total = (depth * 2 * D * L + A_BLK * L) if ckpt else depth * A_BLK * L
        cells = row(label)
        for p, cell in zip((1, 2, 4, 6, 12), cells[1:]):
            quoted = float(re.match(r"[\d.]+", cell).group())
            assert math.isclose(quoted, total / p / GB, rel_tol=0.01, abs_tol=0.51), (label, p, cell)
    assert f"L² B = {sum(scene(8)) ** 2 / GB:.1f} GB" in DOC


def test_block_saves_the_quoted_bytes_per_token():
    """a_blk: bytes kept for backward per token by one lct-3b MMDiTBlock in bf16 (within 2%)."""
    from model.layers import MMDiTBlock
    from model.rope import rope_frequencies

    torch.manual_seed(0)
    block = MMDiTBlock(CFG.width, CFG.heads, CFG.mlp_ratio, CFG.qk_norm).to(torch.bfloat16)
    lt, lv = 64, 448
    txt = torch.randn(1, lt, CFG.width, dtype=torch.bfloat16, requires_grad=True)
    vid = torch.randn(1, lv, CFG.width, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, 2, CFG.width, dtype=torch.bfloat16)
    cos, sin = (x.to(torch.bfloat16) for x in rope_frequencies(
        torch.randint(0, 64, (1, lt + lv, 3)), CFG.rope_axes, CFG.rope_theta))
    skip = {t.untyped_storage().data_ptr() for t in (*block.parameters(), cos, sin)}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(txt, vid, c, torch.zeros(1, lt, dtype=torch.long), torch.ones(1, lv, dtype=torch.long), cos, sin, None)
    per_token = sum(saved.values()) / (lt + lv)
    assert f"**{A_BLK:,} B**" in DOC
    assert math.isclose(per_token, A_BLK, rel_tol=0.02), per_token


def test_worked_training_rows():
    h100 = GPU_PEAK_BF16["H100"] * MFU
    for shots, n, days in ((8, 64, "91.5"), (8, 256, "22.9"), (5, 256, "9.2")):
        step = 64 * flops(shots) / (n * h100)
        assert f"{135_000 * step / 86_400:.1f}" == days
        assert f"| {step:.1f} |" in DOC and days in DOC


def test_curation_arithmetic():
    t_kept = 2.5e6 * 10
    t_film = t_kept / 0.5
    decode = 0.00083 * (1920 * 1080 * 24 / 1e6) + 0.0157 * 5          # the two-point fit at 1080p24, 5 Mb/s
    assert f"{decode:.2f} CPU-s per film-s of decode" in DOC
    cpu = t_film * (0.125 + 0.12) + t_kept * 0.086
    assert f"{cpu / 1e6:.2f}M CPU-s / (604,800 x 0.8) = {cpu / (604_800 * 0.8):.0f} cores" in DOC
    assert f"{t_film / 3600:,.0f} h" in DOC
