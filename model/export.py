"""Export and load an LCT: `model.safetensors` (weights) + `config.json` (the LCTConfig).

Loading never unpickles: weights come from safetensors, the config from JSON, and the model
is rebuilt from the config. Nothing else (optimizer, EMA, training config) lives here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import LCTConfig
from .lct import LCT

WEIGHTS, CONFIG = "model.safetensors", "config.json"


DIFFUSERS = "diffusers"   # a Wan export also holds diffusers/transformer/ (WanTransformer3DModel.from_pretrained)


def config_to_dict(cfg) -> dict:
    """The JSON dict of an LCTConfig, or of a WanConfig (tagged "backbone": "wan")."""
    data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return data if isinstance(cfg, LCTConfig) else {"backbone": "wan", **data}


def config_from_dict(data: dict):
    """LCTConfig (or WanConfig when "backbone" is "wan") from its JSON dict; unknown keys are an error."""
    if data.get("backbone") == "wan":
        from .wan import WanConfig

        fields = {f.name for f in dataclasses.fields(WanConfig)}
        unknown = sorted(set(data) - fields - {"backbone"})
        if unknown:
            raise ValueError(f"config.json has fields {unknown} that WanConfig does not know (known: {sorted(fields)})")
        return WanConfig(**{k: v for k, v in data.items() if k != "backbone"})
    known = {f.name for f in dataclasses.fields(LCTConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"config.json has fields {unknown} that LCTConfig does not know (known: {sorted(known)}); "
            "it was written by another version of the model code"
        )
    if "patch" in data:
        data = {**data, "patch": tuple(data["patch"])}           # JSON has no tuples
    return LCTConfig(**data)


def save_export(model: LCT, directory: str | Path) -> Path:
    """Write model.safetensors + config.json into `directory` (created if needed); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    if not isinstance(model.cfg, LCTConfig):      # Wan: also the plain diffusers transformer (LoRA merged)
        from .wan import export_diffusers

        export_diffusers(model, directory / DIFFUSERS)
    text = json.dumps(config_to_dict(model.cfg), indent=2, sort_keys=True) + "\n"
    (directory / CONFIG).write_text(text)
    return directory


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> LCT:
    """Rebuild the LCT from config.json and load model.safetensors into it (strict)."""
    directory = Path(directory)
    missing = [name for name in (WEIGHTS, CONFIG) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {missing}; an LCT export holds {WEIGHTS} and {CONFIG} "
            "(write one with model.export.save_export)"
        )
    cfg = config_from_dict(json.loads((directory / CONFIG).read_text()))
    if isinstance(cfg, LCTConfig):
        model = LCT(cfg)
    else:
        from .wan import build_wan

        model = build_wan(cfg)
    state = load_file(str(directory / WEIGHTS), device="cpu")
    expected = model.state_dict()
    absent, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if absent or extra or wrong:
        raise ValueError(
            f"{directory / WEIGHTS} does not match {directory / CONFIG}: missing {absent[:5]}, "
            f"unexpected {extra[:5]}, shape mismatches {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
