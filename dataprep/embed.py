"""open_clip image embeddings of shots: the mean of a shot's keyframe embeddings, L2-normalised.

Weights never download here. `pretrained` is a local checkpoint file (.pt/.bin/.safetensors)
or an open_clip tag whose file is already in the local cache (~/.cache/clip or the Hugging
Face cache); anything else is an error that says how to provide the file. `pretrained=None`
builds the architecture with random weights under a fixed seed, so every actor and process
holds identical weights and their embeddings stay comparable; it is warned loudly and
recorded in `description`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache

from dataprep.config import EmbedConfig

log = logging.getLogger(__name__)

INIT_SEED = 0  # random init is seeded: identical weights in every actor


def resolve_weights(model: str, pretrained: str) -> tuple[str, dict]:
    """(local weights file, the tag's open_clip config or {}) without touching the network."""
    import open_clip  # here, not at the top: `lct curate` and the film tasks start ~7 s sooner without it

    if os.path.isfile(pretrained):
        return pretrained, {}
    tag = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag:
        raise FileNotFoundError(
            f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model!r} "
            f"(tags: {open_clip.list_pretrained_tags_by_model(model)}); give a local checkpoint path"
        )
    candidates = []
    if tag.get("hf_hub"):  # "org/repo/" (default file name) or "org/repo/file"
        repo, name = os.path.split(tag["hf_hub"])
        name = name or "open_clip_pytorch_model.bin"
        safe = "open_clip_model.safetensors" if name == "open_clip_pytorch_model.bin" else str(Path(name).with_suffix(".safetensors"))
        candidates += [try_to_load_from_cache(repo, safe), try_to_load_from_cache(repo, name)]
    if tag.get("url"):
        candidates.append(os.path.expanduser(f"~/.cache/clip/{os.path.basename(tag['url'])}"))
    for path in candidates:
        if isinstance(path, str) and os.path.isfile(path):
            return path, tag
    raise FileNotFoundError(
        f"open_clip weights {model}/{pretrained} are not in the local cache and lct never downloads them; "
        f"download once where there is internet (open_clip.create_model('{model}', pretrained='{pretrained}')) "
        f"and copy the cache, or set pretrained to a local checkpoint path"
    )


def create_open_clip(model: str, pretrained: str | None, device: str = "cpu") -> tuple[torch.nn.Module, dict, bool]:
    """(eval model, preprocess cfg, pretrained_loaded). Random init is seeded and warned loudly."""
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {model!r}; see open_clip.list_models()")
    path, tag = resolve_weights(model, pretrained) if pretrained else (None, {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        try:
            net = open_clip.create_model(
                model, pretrained=path, device=device, pretrained_text=False,
                force_quick_gelu=tag.get("quick_gelu", False),
            )
        except RuntimeError as e:  # only a checkpoint can fail here: the architecture is known
            raise RuntimeError(f"cannot load {path} into open_clip {model!r}: {e}") from e
    if path is None:
        log.warning(
            "\n" + "!" * 78 + f"\n  open_clip {model!r} has RANDOM weights (pretrained=None, seed {INIT_SEED}).\n"
            "  Outputs are consistent but carry no semantics. Set a pretrained tag or path.\n" + "!" * 78
        )
    preprocess = open_clip.get_model_preprocess_cfg(net)
    preprocess.update({k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag})
    return net.eval(), preprocess, path is not None


def to_model_input(frames: np.ndarray, preprocess: dict) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, S, S) float32, resized/cropped/normalised like open_clip."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (B, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    size = preprocess["size"]
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = torch.from_numpy(np.array(frames, copy=True)).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    h, w = x.shape[-2:]
    mode = preprocess.get("resize_mode", "shortest")
    if mode == "squash":
        new_h, new_w = out_h, out_w
    elif mode == "shortest":
        scale = max(out_h / h, out_w / w)
        new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    else:
        raise ValueError(f"resize_mode {mode!r} is not supported (use 'shortest' or 'squash')")
    interp = preprocess.get("interpolation", "bicubic")
    x = F.interpolate(x, size=(new_h, new_w), mode=interp, antialias=interp != "nearest").clamp_(0, 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    x = x[:, :, top : top + out_h, left : left + out_w]  # (B, 3, S, S) center crop
    mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipEmbedder:
    """Loads open_clip once; __call__ embeds shots."""

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.model, self.preprocess, self.pretrained_loaded = create_open_clip(cfg.model, cfg.pretrained, cfg.device)
        self.dim = int(self.model.visual.output_dim)
        self.description = {
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "random_init": not self.pretrained_loaded,
            "dim": self.dim,
        }

    def __call__(self, shots: list[np.ndarray]) -> np.ndarray:
        """[(K, H, W, 3) uint8 keyframes per shot] -> (N, D) float32 unit vectors.

        Keyframe embeddings are L2-normalised before the mean (as CLIP compares them),
        so no keyframe dominates a shot by its norm; the mean is normalised again.
        """
        for i, frames in enumerate(shots):
            if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"shot {i}: expected (K>=1, H, W, 3) uint8 keyframes, got {frames.shape} {frames.dtype}")
        if not shots:
            return np.zeros((0, self.dim), np.float32)
        images = torch.cat([to_model_input(frames, self.preprocess) for frames in shots])  # (sum K, 3, S, S)
        with torch.inference_mode():
            feats = torch.cat([
                self.model.encode_image(images[i : i + self.cfg.batch_size].to(self.cfg.device)).float().cpu()
                for i in range(0, len(images), self.cfg.batch_size)
            ])  # (sum K, D)
            feats = F.normalize(feats, dim=-1)
            per_shot = torch.stack([chunk.mean(0) for chunk in feats.split([len(f) for f in shots])])  # (N, D)
            return F.normalize(per_shot, dim=-1).numpy().astype(np.float32)
