"""Shot-by-shot generation with a history pool: each new shot sees the earlier shots most related to it.

    feats = prompt_features(text, captions)                 # (N, Dt) pooled prompt features
    select = lambda k: relevant_history(feats, k, cap=model.cfg.context_shots - 1)
    result = model.sampling.sample_shots(model, scene, config, select)   # any number of shots

model/sampling.py's autoregressive mode conditions shot k on *all* shots < k, which stops at
context_shots. With a history pool `select(k)` names the history of shot k (earlier shots, chronological), so a
scene can be longer than the model's context: the history pool keeps the `cap` earlier shots
whose prompts are most similar to shot k's prompt (cosine of the text encoder's pooled
features; a CLIP text encoder when the checkpoint's text encoder is open_clip), ties going to
the more recent shot, and shows them to the model in their original order. While every earlier
shot fits (k <= cap) the history is all of them, and the result equals
`model.sampling.sample(mode="autoregressive")` exactly (same noise draws, same order).

The loop itself is `model.sampling.sample_shots` (its docstring: the small scene per shot,
the re-noised history, KV-cache reuse and rebuilds, given shots); this module only chooses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from model.prompt import plain_prompt
from model.text import TextEncoder


def prompt_features(text: TextEncoder, prompts: list[str]) -> Tensor:
    """(N, Dt) pooled text features of the prompts, "[SHOT CUT]" stripped (it is shared by all)."""
    return text([plain_prompt(p) for p in prompts]).pooled.float().cpu()


def recent_history(k: int, cap: int) -> list[int]:
    """The `cap` shots just before shot k (what a plain sliding window would show)."""
    return list(range(max(0, k - cap), k))


def relevant_history(feats: Tensor, k: int, cap: int) -> list[int]:
    """Earlier shots for shot k: all when they fit (k <= cap), else the `cap` most similar prompts.

    feats (N, D) prompt features; similarity = cosine to feats[k], ties to the more recent
    shot; returned in chronological order.
    """
    if cap < 0:
        raise ValueError(f"history cap must be >= 0, got {cap}")
    if not 0 <= k < len(feats):
        raise ValueError(f"shot {k} is not among the {len(feats)} prompts")
    if k <= cap:
        return list(range(k))
    sims = F.cosine_similarity(feats[:k], feats[k][None], dim=-1)        # (k,)
    scores = [round(float(s), 6) for s in sims]                            # stable across devices
    best = sorted(range(k), key=lambda j: (-scores[j], -j))[:cap]
    return sorted(best)
