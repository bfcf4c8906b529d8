"""The export bundle: what a trained LCT needs at inference, written as one folder and loaded back.

    write_export(model, RUN / "export", text=..., codec=..., frames=8, fps=8.0, step=400)
    bundle = load_bundle(RUN)              # a run dir (uses RUN/export) or an export dir
    model = load_export(RUN / "export")    # the LCT alone

An export dir holds three files:
    model.safetensors   the weights
    config.json         the LCTConfig
    lct.json            the text encoder config, the latent codec config (its `size` is the frame
                        size the model was trained at), frames per shot, fps, the training step, the run and
                        the prompt-dropout rate it was trained with (`text_dropout`; > 0 turns
                        classifier-free guidance on by default) and the sha256 of model.safetensors
                        (`weights_sha256`, checked at load: a header alone does not vouch for the data)
Loading never unpickles: weights come from safetensors, the configs from JSON, and the model
is rebuilt from its config. Nothing of training (optimizer, EMA, DeepSpeed) lives here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import LCTConfig
from .latents import LatentCodec, LatentCodecConfig, build_codec
from .lct import LCT
from .text import TextEncoder, TextEncoderConfig

WEIGHTS, CONFIG, INFO = "model.safetensors", "config.json", "lct.json"
INFO_KEYS = ("text", "codec", "frames", "fps", "size")        # what load_bundle reads of lct.json


class ExportError(ValueError):
    """An export folder whose files are damaged or do not match each other; the message names the file."""


DIFFUSERS = "diffusers"   # a Wan export also holds diffusers/transformer/ (WanTransformer3DModel.from_pretrained)


def config_to_dict(cfg) -> dict:
    """The JSON dict of an LCTConfig, or of a WanConfig (tagged "backbone": "wan")."""
    data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return data if isinstance(cfg, LCTConfig) else {"backbone": "wan", **data}


def architecture_diff(ours, theirs) -> dict:
    """{field: (theirs, ours)} of two model configs (LCTConfig / WanConfig), ignoring what a fine-tune from
    another run may change (attention, grad_checkpointing); {} = the weights of one fit the other."""
    free = {"attention": None, "grad_checkpointing": None}
    a, b = config_to_dict(ours) | free, config_to_dict(theirs) | free
    return {k: (b.get(k), a.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


RENAMED = {"max_shots": "context_shots"}   # config.json keys of earlier exports -> their names now


def config_from_dict(data: dict):
    """LCTConfig (or WanConfig when "backbone" is "wan") from its JSON dict; unknown keys are an error.
    Keys of earlier versions (RENAMED) are read under their new names: old exports still load."""
    data = {RENAMED.get(key, key): value for key, value in data.items()}
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); re-export the run with `lct train --out RUN --export-only`") from e
    if not isinstance(data, dict):
        raise ExportError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading (or allocating) any weight."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(
            f"{path} is not a readable safetensors file ({e}); it is damaged or was not written by lct: "
            "re-export the run with `lct train --out RUN --export-only`"
        ) from e


def _build(cfg, device: str | torch.device = "cpu"):
    """The model of `cfg`, randomly initialised on `device` ("meta": shapes only, nothing allocated)."""
    if isinstance(cfg, LCTConfig):
        with torch.device(device):
            return LCT(cfg)
    from .wan import build_wan

    return build_wan(cfg, device)


MAX_DERIVED_BYTES = 256 * 2**20   # non-weight buffers a config derives (Wan's RoPE table); no header vouches for them


def _depth_key(cfg) -> str:
    return "depth" if isinstance(cfg, LCTConfig) else "transformer.num_layers"


def _meta_build(cfg, shapes: dict[str, tuple[int, ...]], directory: Path):
    """The model of `cfg` on the meta device, after the checks a meta build does not make: the block count
    against the header first (a million blocks take hours to build even on meta), then the size of the
    buffers the config derives (not in the file, so real memory at the real build)."""
    blocks = {key.split(".")[1] for key in shapes if key.startswith("blocks.")}
    if cfg.depth != len(blocks):
        raise ExportError(f"{directory / WEIGHTS} does not match {directory / CONFIG}: {_depth_key(cfg)!r} is "
                          f"{cfg.depth} in {CONFIG} but {WEIGHTS} holds {len(blocks)} blocks")
    try:
        meta = _build(cfg, "meta")
    except (TypeError, ValueError, RuntimeError) as e:
        raise ExportError(f"{directory / CONFIG}: its model cannot be built ({e})") from e
    persistent = set(meta.state_dict())
    derived = {n: b.numel() * b.element_size() for n, b in meta.named_buffers() if n not in persistent}
    if sum(derived.values()) > MAX_DERIVED_BYTES:
        sizes = "" if isinstance(cfg, LCTConfig) else (
            f"; 'transformer.rope_max_seq_len' is {cfg.transformer.get('rope_max_seq_len')}")
        raise ExportError(f"{directory / CONFIG}: the buffers it derives ({sorted(derived)}) would take "
                          f"{sum(derived.values()) / 2**20:.0f} MiB, over the {MAX_DERIVED_BYTES // 2**20} MiB an "
                          f"export may derive{sizes}")
    return meta


def file_sha256(path: Path) -> str:
    """sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def load_export(directory: str | Path, device: str | torch.device = "cpu", weights_sha256: str | None = None) -> LCT:
    """Rebuild the LCT from config.json and load model.safetensors into it (strict).

    The config is checked against the safetensors header on the meta device first (block count, then
    every tensor's shape, and the size of what it derives), so a hostile or mismatched config.json is
    refused before a single weight is allocated. With `weights_sha256` (lct.json's) the file's bytes
    must also hash to it: zeroed or replaced weights under an intact header load otherwise.
    """
    directory = Path(directory)
    missing = [name for name in (WEIGHTS, CONFIG) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {missing}; an LCT export holds {WEIGHTS} and {CONFIG} "
            "(write one with model.export.save_export)"
        )
    try:
        cfg = config_from_dict(_read_json(directory / CONFIG))
    except (TypeError, ValueError) as e:
        raise ExportError(f"{directory / CONFIG}: {e}") from e
    shapes = weight_shapes(directory / WEIGHTS)
    meta = _meta_build(cfg, shapes, directory)
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    absent, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [f"{k}: file {shapes[k]} vs config {expected[k]}" for k in sorted(shapes) if k in expected and shapes[k] != expected[k]]
    if absent or extra or wrong:
        raise ExportError(
            f"{directory / WEIGHTS} does not match {directory / CONFIG}: missing {absent[:5]}, "
            f"unexpected {extra[:5]}, shape mismatches {wrong[:5]}"
        )
    if weights_sha256 is not None and file_sha256(directory / WEIGHTS) != weights_sha256:
        raise ExportError(f"{directory / WEIGHTS} does not match {INFO}'s weights_sha256: the file is damaged or "
                          "was replaced; re-export the run with `lct train --out RUN --export-only`")
    model = _build(cfg)
    try:
        state = load_file(str(directory / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as e:      # header fine, data truncated
        raise ExportError(f"{directory / WEIGHTS} is damaged ({e}); re-export the run with `lct train --out RUN --export-only`") from e
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# -- the bundle: weights + config.json + lct.json ------------------------------------------------
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
        "weights_sha256": file_sha256(tmp / WEIGHTS),   # checked at load (exports before it have none)
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
        if (candidate / INFO).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path} is not an LCT run or export: expected {path}/export/{INFO} (a run of `lct train`) "
        f"or {path}/{INFO} + {WEIGHTS} (an export dir)"
    )


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


INFO_FIELDS = {   # lct.json key -> (what it must be, the check); optional ones are checked when present
    "frames": ("a positive int (video frames per shot)", _positive_int),
    "fps": ("a number > 0", lambda v: _number(v) and v > 0),
    "size": ("[H, W], two positive ints", lambda v: isinstance(v, list) and len(v) == 2 and all(map(_positive_int, v))),
    "step": ("an int >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "run": ("a string", lambda v: isinstance(v, str)),
    "text_dropout": ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    "flow_shift": ("a number > 0", lambda v: _number(v) and v > 0),
    "weights_sha256": ("64 lowercase hex digits", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)),
}


def check_info(info: dict, path: Path) -> None:
    """lct.json's fields have their types and ranges (a hand-edited or hostile file is named, key and value)."""
    absent = [k for k in INFO_KEYS if k not in info]
    if absent:
        raise ExportError(f"{path} lacks {absent} (an lct.json holds {list(INFO_KEYS)}); "
                          "re-export the run with `lct train --out RUN --export-only`")
    for key, (wanted, ok) in INFO_FIELDS.items():
        if key in info and not ok(info[key]):
            raise ExportError(f"{path}: {key!r} must be {wanted}, got {info[key]!r}")
    for key in ("text", "codec"):
        if not isinstance(info[key], dict):
            raise ExportError(f"{path}: {key!r} must be a JSON object (its config), got {info[key]!r}")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> InferenceBundle:
    """The model, its text encoder and codec, and what it was trained at, from a run or export dir."""
    directory = export_dir(path)
    info = _read_json(directory / INFO)
    check_info(info, directory / INFO)
    try:
        codec_cfg = dict(info["codec"])
        if codec_cfg.get("size") is not None:
            codec_cfg["size"] = tuple(codec_cfg["size"])
        codec_config, text_config = LatentCodecConfig(**codec_cfg), TextEncoderConfig(**info["text"])
    except (TypeError, ValueError) as e:
        raise ExportError(f"{directory / INFO}: its text or codec section is not valid ({e})") from e
    codec = build_codec(codec_config)
    text = TextEncoder(text_config).to(device)
    model = load_export(directory, device, weights_sha256=info.get("weights_sha256"))
    return InferenceBundle(model, text, codec, int(info["frames"]), tuple(info["size"]), float(info["fps"]), info, directory)
