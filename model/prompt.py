"""The prompt sequence of a scene, the one rule training, generation and evaluation share.

    prompts = scene_prompts(global_caption, shot_captions)   # [global, "[SHOT CUT] " + caption, ...]
    scene = encode_scene(text, global_caption, shot_captions, latents)   # a model.Scene

The paper's sequence: the global prompt first, then per shot "[SHOT CUT] " + its caption. A
caption that already starts with "[SHOT CUT]" is not prefixed again. `plain_prompt` strips the
marker (what the history pool compares: the marker is shared by every shot). Segments of one
shot (`lct generate --mode extend`) are fed as written, without the marker: `encode_prompts`.
"""

from __future__ import annotations

from torch import Tensor

from .lct import Scene, Shot
from .text import TextEncoder

SHOT_CUT = "[SHOT CUT]"


def shot_prompt(caption: str) -> str:
    """The shot's prompt in the LCT sequence: "[SHOT CUT] " + caption (never doubled)."""
    caption = caption.strip()
    return caption if caption.startswith(SHOT_CUT) else f"{SHOT_CUT} {caption}"


def plain_prompt(prompt: str) -> str:
    """The prompt without its leading "[SHOT CUT]" marker."""
    return prompt.strip().removeprefix(SHOT_CUT).strip()


def scene_prompts(global_caption: str, shot_captions: list[str]) -> list[str]:
    """[global prompt, shot 0 prompt, ...]: the text groups of a scene, in order."""
    return [global_caption] + [shot_prompt(c) for c in shot_captions]


def encode_prompts(text: TextEncoder, prompts: list[str]) -> list[Tensor]:
    """Per prompt its real text tokens (T_i, Dt), on the encoder's device (padding dropped)."""
    feats = text(prompts)                                        # tokens (N, T, Dt), mask (N, T)
    return [feats.tokens[i, feats.mask[i]] for i in range(len(prompts))]


def encode_scene(text: TextEncoder, global_caption: str, shot_captions: list[str], latents: list[Tensor]) -> Scene:
    """A model.Scene from a scene's captions and per-shot latents (C, F, H, W)."""
    if len(shot_captions) != len(latents):
        raise ValueError(f"{len(shot_captions)} shot captions for {len(latents)} shot latents")
    rows = encode_prompts(text, scene_prompts(global_caption, shot_captions))
    return Scene(global_text=rows[0], shots=[Shot(text=r, latent=z) for r, z in zip(rows[1:], latents)])
