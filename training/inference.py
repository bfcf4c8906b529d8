"""What a trained LCT needs at inference, written beside its weights and loaded back as one bundle.

    write_export(model, RUN / "export", text=..., codec=..., frames=8, fps=8.0, step=400)
    bundle = load_bundle(RUN)              # a run dir (uses RUN/export) or an export dir
    scene = encode_scene(bundle.text, global_caption, shot_captions, latents)

An export dir holds `model.safetensors` + `config.json` (model/export.py: the LCTConfig) and
`lct.json`: the text encoder config, the latent codec config (its `size` is the frame size the
model was trained at), frames per shot, fps, the training step and the prompt-dropout rate it
was trained with (`text_dropout`; > 0 turns classifier-free guidance on by default). No DeepSpeed, no pickle.

Prompts follow the paper's sequence: the global prompt, then per shot "[SHOT CUT] " + caption.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from model import LCT, LatentCodecConfig, Scene, Shot, TextEncoder, TextEncoderConfig, build_codec, load_export, save_export
from model.latents import LatentCodec

INFO = "lct.json"
SHOT_CUT = "[SHOT CUT] "


@dataclass
class InferenceBundle:
    model: LCT
    text: TextEncoder
    codec: LatentCodec
    frames: int                    # video frames per shot the model was trained on
    size: tuple[int, int]          # (H, W) video frame size
    fps: float
    info: dict                     # the whole lct.json (step, run, configs)
    path: Path                     # the export dir


def write_export(
    model: LCT, directory: str | Path, *, text: TextEncoderConfig, codec: LatentCodecConfig,
    frames: int, fps: float, step: int, run: str = "", text_dropout: float = 0.0, flow_shift: float | None = None,
) -> Path:
    """save_export + lct.json; written to a temp dir and renamed so a reader never sees half of it."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)                # a Wan export holds a diffusers/ folder too
    save_export(model, tmp)
    if codec.size is None:
        raise ValueError("write_export needs codec.size = (H, W), the frame size the model was trained at")
    info = {
        "text": dataclasses.asdict(text) | {"cache_dir": None},
        "codec": dataclasses.asdict(codec),
        "frames": frames, "fps": fps, "size": list(codec.size), "step": step, "run": run,
        "text_dropout": text_dropout,     # > 0: the model learnt the null prompt, so CFG is on by default
    }
    if flow_shift is not None:            # the base model's sampling shift (Wan), the default of lct generate
        info["flow_shift"] = flow_shift
    (tmp / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def export_dir(path: str | Path) -> Path:
    """A run dir (-> RUN/export) or an export dir itself, with a teaching error for anything else."""
    path = Path(path)
    for candidate in (path, path / "export"):
        if (candidate / INFO).is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path} is not an LCT run or export: expected {path}/export/{INFO} (a run of `lct train`) "
        f"or {path}/{INFO} + model.safetensors (an export dir)"
    )


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> InferenceBundle:
    directory = export_dir(path)
    info = json.loads((directory / INFO).read_text())
    codec_cfg = dict(info["codec"])
    if codec_cfg.get("size") is not None:
        codec_cfg["size"] = tuple(codec_cfg["size"])
    codec = build_codec(LatentCodecConfig(**codec_cfg))
    text = TextEncoder(TextEncoderConfig(**info["text"])).to(device)
    model = load_export(directory, device)
    return InferenceBundle(model, text, codec, int(info["frames"]), tuple(info["size"]), float(info["fps"]), info, directory)


def shot_prompt(caption: str) -> str:
    """The shot's prompt in the LCT sequence: "[SHOT CUT] " + caption (never doubled)."""
    caption = caption.strip()
    return caption if caption.startswith(SHOT_CUT.strip()) else SHOT_CUT + caption


def encode_scene(text: TextEncoder, global_caption: str, shot_captions: list[str], latents: list[Tensor]) -> Scene:
    """A model.Scene from prompts and per-shot latents (C, F, H, W); text features stay on the encoder's device."""
    if len(shot_captions) != len(latents):
        raise ValueError(f"{len(shot_captions)} shot captions for {len(latents)} shot latents")
    feats = text([global_caption] + [shot_prompt(c) for c in shot_captions])
    rows = [feats.tokens[i, feats.mask[i]] for i in range(len(latents) + 1)]   # (T_i, Dt) real tokens
    return Scene(global_text=rows[0], shots=[Shot(text=r, latent=z) for r, z in zip(rows[1:], latents)])
