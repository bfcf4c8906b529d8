"""Captions of shots and scenes, in priority: sidecar file -> VLM endpoint -> on-box CoCa.

- Sidecar: `<film stem>.captions.json` beside a film, read and matched by `dataprep/sidecar.py`
  (no model: the film task reads it without importing open_clip).
- VLM: `dataprep.vlm.VLMCaptioner` (re-exported here), one request per scene.
- CoCa: open_clip CoCa captions one keyframe per shot; random init (the offline default)
  gives gibberish that is consistent across actors, and is recorded as such.
Without a sidecar or VLM global caption, `compose_global` builds one from the shot captions.
`caption_source` of a shot is one of CAPTION_SOURCES.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dataprep.config import CaptionConfig
from dataprep.embed import create_open_clip, to_model_input
from dataprep.vlm import LCT_PROMPT, CaptionError, SceneCaptions, VLMCaptioner

__all__ = [
    "CAPTION_SOURCES", "CocaCaptioner", "compose_global", "VLMCaptioner", "SceneCaptions", "CaptionError", "LCT_PROMPT",
]

CAPTION_SOURCES = ("sidecar", "vlm", "coca", "none")


# ---- CoCa ------------------------------------------------------------------------------------

SOT, EOT = 49406, 49407  # open_clip tokenizer <start_of_text>, <end_of_text>
GENERATE_SEED = 0


def decode_tokens(ids: torch.Tensor) -> str:
    """(L,) generated ids -> text without <start_of_text>, <end_of_text> and the padding after it."""
    import open_clip  # loaded with the CoCa model, not by every importer of dataprep.run

    ids = ids.tolist()
    ids = ids[1:] if ids and ids[0] == SOT else ids
    ids = ids[: ids.index(EOT)] if EOT in ids else ids
    return open_clip.decode(torch.tensor(ids, dtype=torch.long)).strip()


class CocaCaptioner:
    """Loads open_clip CoCa once; __call__ captions images (one keyframe per shot)."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.model, self.preprocess, self.pretrained_loaded = create_open_clip(
            cfg.coca_model, cfg.coca_pretrained, cfg.device
        )
        if not hasattr(self.model, "generate"):
            raise ValueError(f"coca_model {cfg.coca_model!r} is not a CoCa model (it cannot generate text)")
        self.description = {"model": cfg.coca_model, "pretrained": cfg.coca_pretrained,
                            "random_init": not self.pretrained_loaded}

    def __call__(self, images: list[np.ndarray]) -> list[str]:
        """[(H, W, 3) uint8] -> one caption per image.

        Deterministic: sampling runs under a fixed seed per batch, so the same batch always
        gives the same text. Greedy (coca_top_k=1) does not sample, yet the batch size can
        still flip near-tied tokens through float noise (it does with random weights).
        """
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
        seq_len, captions = self.cfg.coca_seq_len, []
        for b in range(0, len(images), self.cfg.batch_size):
            batch = images[b : b + self.cfg.batch_size]
            x = torch.cat([to_model_input(image[None], self.preprocess) for image in batch])  # (B, 3, S, S)
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(GENERATE_SEED)
                ids = self.model.generate(
                    x.to(self.cfg.device), seq_len=seq_len, min_seq_len=min(5, seq_len - 1),
                    generation_type="top_k", top_k=self.cfg.coca_top_k,
                )  # (B, <= seq_len)
            captions += [decode_tokens(row.cpu()) for row in ids]
        return captions


# ---- global caption without a VLM ------------------------------------------------------------

CHARACTER = re.compile(r"\bCharacter (\d+)\b(?::\s*([^.]+?)\s*(?=\.|\bCharacter \d|$))?")


def compose_global(shot_captions: list[str]) -> str:
    """A global caption in the LCT layout from the shot captions alone.

    The rule (nothing is invented beyond the shot captions):
    - [Character]: every "Character N" mentioned, by number; its description is the text after
      its first "Character N: ..." (up to a full stop), else the shots it appears in.
    - [Environment]: the first non-empty shot caption (a scene usually opens on an establishing
      shot); "unknown" if every caption is empty.
    - [Story]: the non-empty shot captions in order, joined as sentences.
    """
    if not shot_captions:
        raise ValueError("compose_global needs the captions of at least one shot, got none")
    texts = [c.strip().rstrip(".") for c in shot_captions if c and c.strip()]
    appears: dict[int, list[int]] = {}  # character number -> shots (1-based) that name it
    described: dict[int, str] = {}
    for i, caption in enumerate(shot_captions, start=1):
        for m in CHARACTER.finditer(caption or ""):
            n = int(m.group(1))
            shots = appears.setdefault(n, [])
            if i not in shots:
                shots.append(i)
            if m.group(2) and n not in described:
                described[n] = m.group(2)

    def describe(n: int) -> str:
        if n in described:
            return described[n]
        return ("in shot " if len(appears[n]) == 1 else "in shots ") + ", ".join(map(str, appears[n]))

    characters = " ".join(f"Character {n}: {describe(n)}." for n in sorted(appears)) or "none identified."
    environment = f"{texts[0]}." if texts else "unknown."
    story = ". ".join(texts) + "." if texts else "unknown."
    return f"[Character] {characters} [Environment] {environment} [Story] {story}"
