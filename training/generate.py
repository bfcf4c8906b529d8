"""`lct generate`: a scene file + a trained LCT -> shot videos, the cut film, a contact sheet, a record.

    bundle = load_bundle(RUN)                         # model/export.py
    spec = load_scene("scene.yaml")                   # validated; paths relative to the YAML
    plan = plan_scene(spec, bundle, mode="autoregressive")   # SceneError on anything it cannot do
    result = generate(bundle, plan, on_step=...)
    write_outputs(result, bundle, OUT)                # shot-000.mp4 ..., scene.mp4, sheet.png, ...

Scene file (YAML; unknown keys are errors):

    global: "Character 1: ... Environment: ... Story: ..."
    shots:
      - prompt: "Character 1 slides to the left"     # "[SHOT CUT] " is added (never doubled)
        frames: 8                                     # default: the checkpoint's frames per shot
        condition: {image: ref.png, t: 0.0}           # or {clip: ref.mp4, t: 0.0}; optional
    references:                                       # optional: reference-only condition shots
      - {image: hero.png, prompt: "Character 1"}      # seen by every shot, not part of the film
    seed: 0
    steps: 30
    cfg: 3.0          # classifier-free guidance scale (1 = off, one forward per step); default:
                      # WAN_CFG (5, diffusers' WanPipeline) for a Wan checkpoint on its own umT5,
                      # else DEFAULT_CFG when the checkpoint was trained with prompt dropout, else 1
    negative: "blurry, static"   # the unconditional branch's prompt, for every group (global and
                      # shots, as written); default: the null prompt for lct's MMDiT, "" for Wan
                      # (model/sampling.py: what training's prompt dropout used)
    shift: 1.0        # SD3 timestep shift of the Euler grid
    t_c: 0.3          # autoregressive / extend: history shots are re-noised to this t

Modes:
    joint           all shots denoised together (<= context_shots shots).
    conditioned     shots with a `condition` are given (an image as a single-frame shot, as in
                    training's image shots, unless the shot sets `frames`: then the image is
                    repeated; or a clip) and held at the condition's t (0 = clean, returned as
                    is) while the others are denoised. model/sampling.py holds every given shot
                    at one t_c, so all conditions of a scene must share the same t.
    autoregressive  shot by shot with a history pool (training/history.py): any number of
                    shots; each sees at most context_shots - 1 earlier shots, the most relevant to
                    its prompt. A t=0 condition is used as that shot and becomes history.
    extend          the shots of the file are *segments of one shot*: segment k is generated
                    with segment k - 1 as history (at t_c), prompts used as written (no
                    "[SHOT CUT]"), and the segments are concatenated into one long shot. A t=0
                    condition on segment 0 extends an existing image / clip.

References (compositional generation, the paper's emergent ability): identity or environment
images given as clean single-frame condition shots placed before the scene's shots. Every shot
attends to them (joint / conditioned: one attention over all; autoregressive: they are history),
but they are not part of the output film: no shot file, not in scene.mp4 or the sheet. In joint
mode a scene with references runs as conditioned (the references are its given shots).

Everything is deterministic under the seed: noise is drawn on a CPU generator in shot order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from dataprep.media import ClipError, cover_crop, decode_clip, encode_mp4, frames_sheet
from model import SamplerConfig, Scene, Shot, encode_prompts, encode_scene, sample, shot_prompt
from model.export import InferenceBundle
from model.sampling import default_negative, negative_features, sample_shots
from dataprep.configfile import key_hints, read_yaml
from training.history import prompt_features, relevant_history

MODES = ("joint", "conditioned", "autoregressive", "extend")
OnStep = Callable[[str, int, int], None]    # (what is being denoised, steps done, steps)


class SceneError(ValueError):
    """The scene file is invalid, or asks for something this checkpoint cannot generate."""


# -- the scene file -------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ConditionSpec(_Strict):
    image: str | None = Field(None, description="PNG/JPG, repeated over the shot's frames.")
    clip: str | None = Field(None, description="A video file (mp4), sampled at the checkpoint's fps.")
    t: float = Field(0.0, ge=0.0, lt=1.0, description="Timestep the condition is held at (0 = clean).")

    @model_validator(mode="after")
    def _one_source(self) -> "ConditionSpec":
        if (self.image is None) == (self.clip is None):
            raise ValueError(f"a condition needs exactly one of image or clip, got image={self.image!r}, clip={self.clip!r}")
        return self

    @property
    def path(self) -> str:
        return self.image or self.clip


class ReferenceSpec(_Strict):
    image: str = Field(..., description="PNG/JPG of an identity or an environment (a single-frame shot).")
    prompt: str = Field("reference", min_length=1, description="The reference shot's prompt, e.g. 'Character 1'.")


class ShotSpec(_Strict):
    prompt: str = Field(..., min_length=1, description="The shot's prompt, e.g. \"[SHOT CUT] Character 1 ...\".")
    frames: int | None = Field(None, ge=1, description="Video frames; default: the checkpoint's.")
    condition: ConditionSpec | None = Field(None, description="A visual condition held at timestep t (optional).")


class SceneSpec(_Strict):
    global_: str = Field("", alias="global", description="The global prompt of the scene.")
    shots: list[ShotSpec] = Field(..., min_length=1, description="The shots, in order.")
    references: list[ReferenceSpec] = Field(
        default_factory=list, description="Reference-only condition shots: seen by every shot, not in the film.")
    seed: int = Field(0, description="Seed of the noise; same seed, same latents.")
    steps: int = Field(30, ge=1, description="Euler steps.")
    cfg: float | None = Field(
        None, ge=0.0, description="Classifier-free guidance scale; 1 = off; default: DEFAULT_CFG if the "
        "checkpoint was trained with prompt dropout, else 1.")
    negative: str | None = Field(
        None, description="Negative prompt: the unconditional branch of guidance conditions every group (global "
        "and shots) on it, as written; default: the null prompt (lct-mmdit), the empty string (Wan, as diffusers).")
    shift: float | None = Field(None, gt=0.0, description="Timestep shift of the sampling schedule (1 = none); "
                                "default: the base model's flow_shift (Wan: its scheduler's), else 1.")
    t_c: float = Field(0.3, ge=0.0, lt=1.0, description="Timestep of history shots (autoregressive, extend).")


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = f" (got {e['input']!r})" if e["type"] not in ("missing",) and not isinstance(e["input"], dict) else ""
        lines.append(f"  {where}: {e['msg']}{got}")
    return "\n".join(lines + [f"  {hint}" for hint in key_hints(err, SceneSpec)])


def load_scene(path: str | Path) -> SceneSpec:
    """Read and validate a scene file; condition paths become absolute (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"scene file {path} not found")
    try:
        data = read_yaml(path)
    except ValueError as e:
        raise SceneError(str(e)) from e
    if not isinstance(data, dict):
        raise SceneError(f"{path} must be a mapping with `global` and `shots`, got {type(data).__name__}")
    try:
        spec = SceneSpec.model_validate(data)
    except ValidationError as e:
        raise SceneError(f"{path} is not a valid scene file:\n{_describe(e)}") from e
    for i, shot in enumerate(spec.shots):
        cond = shot.condition
        if cond is None:
            continue
        full = (path.parent / cond.path).resolve()
        if not full.is_file():
            raise SceneError(f"shot {i}: condition {'image' if cond.image else 'clip'} {cond.path!r} not found (looked for {full})")
        shot.condition = cond.model_copy(update={"image" if cond.image else "clip": str(full)})
    for i, ref in enumerate(spec.references):
        full = (path.parent / ref.image).resolve()
        if not full.is_file():
            raise SceneError(f"reference {i}: image {ref.image!r} not found (looked for {full})")
        spec.references[i] = ref.model_copy(update={"image": str(full)})
    return spec


DEFAULT_CFG = 3.0     # guidance scale when the checkpoint was trained with prompt dropout
WAN_CFG = 5.0         # diffusers' WanPipeline guidance_scale: a Wan base learnt "" in its pre-training


def default_cfg(bundle: InferenceBundle) -> float:
    """WAN_CFG for a Wan checkpoint reading its base's own text features (umT5, no trained projection):
    the base was pre-trained with the empty prompt as its unconditional branch. Otherwise DEFAULT_CFG if
    the checkpoint learnt its unconditional branch (recipe.text_dropout > 0), else 1 (off)."""
    cfg = bundle.model.cfg
    if default_negative(cfg) is not None and getattr(cfg, "text_features", None) is None:
        return WAN_CFG
    return DEFAULT_CFG if float(bundle.info.get("text_dropout") or 0.0) > 0 else 1.0


# -- what to generate ---------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """A scene file checked against a checkpoint: everything `generate` needs."""

    spec: SceneSpec
    mode: str
    shapes: list[tuple[int, int, int, int]]     # per shot (C, F, H, W) latent
    frames: list[int]                           # per shot video frames
    given: dict[int, Tensor]                    # shot -> clean latent of its condition
    sampler: SamplerConfig
    references: int = 0                         # the first `references` shots are reference-only


def estimate_bytes(shapes: list[tuple[int, ...]], frames: list[int], bundle: InferenceBundle, mode: str) -> int:
    """Rough peak bytes of generating these shots (fp32): attention scores (heads x L x L, the masked
    path materialises them) + activations (~16 D per token) twice for CFG, plus the decoded frames.
    Autoregressive / extend see at most context_shots shots at once."""
    cfg = bundle.model.cfg
    p_t, p_h, p_w = cfg.patch
    tokens = sorted((s[1] // p_t) * (s[2] // p_h) * (s[3] // p_w) + 77 for s in shapes)
    window = tokens if mode in ("joint", "conditioned") else tokens[-cfg.context_shots:]
    L = sum(window) + 77
    H, W = bundle.size
    return 4 * (2 * (cfg.heads * L * L + 16 * cfg.width * L) + 3 * H * W * sum(frames))


def available_bytes(device) -> int:
    """Free memory of the device the model is on (CUDA: torch.cuda.mem_get_info, CPU: psutil)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(shapes, frames, bundle: InferenceBundle, mode: str) -> None:
    """Refuse (SceneError: exit 2) a scene whose generation would need more memory than the device has free."""
    need = estimate_bytes(shapes, frames, bundle, mode)
    device = next(bundle.model.parameters()).device
    have = available_bytes(device)
    if need > have:
        raise SceneError(
            f"generating {len(shapes)} shots of frames {frames} at {bundle.size[0]}x{bundle.size[1]} in --mode {mode} "
            f"needs about {need / 2**30:.1f} GiB but {device} has {have / 2**30:.1f} GiB free; use fewer or shorter "
            f"shots (the checkpoint was trained with frames={bundle.frames}) or --mode autoregressive"
        )


def default_mode(spec: SceneSpec) -> str:
    """conditioned when the scene has a condition or a reference, else joint."""
    return "conditioned" if spec.references or any(s.condition for s in spec.shots) else "joint"


def plan_scene(
    spec: SceneSpec, bundle: InferenceBundle, mode: str | None = None,
    steps: int | None = None, seed: int | None = None, cfg: float | None = None, negative: str | None = None,
) -> Plan:
    """Check the scene against the checkpoint (shots, frames, conditions); SceneError says what to change.
    steps, seed, cfg, negative: command-line values that override the scene file's."""
    mode = mode or default_mode(spec)
    if mode not in MODES:
        raise SceneError(f"mode must be one of {MODES}, got {mode!r}")
    overrides = {k: v for k, v in dict(steps=steps, seed=seed, cfg=cfg, negative=negative).items() if v is not None}
    try:
        spec = SceneSpec.model_validate(spec.model_dump(by_alias=True) | overrides)
    except ValidationError as e:
        raise SceneError(f"invalid value from the command line:\n{_describe(e)}") from e
    refs = len(spec.references)
    if refs and mode == "extend":
        raise SceneError("references are for scenes of shots; --mode extend continues one shot (drop `references`)")
    if refs and mode == "joint":
        mode = "conditioned"                                  # the references are the given shots
    if refs:                                                  # references first, as clean single-frame shots
        shots = [ShotSpec(prompt=r.prompt, frames=1, condition=ConditionSpec(image=r.image, t=0.0))
                 for r in spec.references]
        spec = spec.model_copy(update={"shots": shots + list(spec.shots)})
    model_cfg = bundle.model.cfg
    S = len(spec.shots)
    if mode in ("joint", "conditioned") and S > model_cfg.context_shots:
        raise SceneError(
            f"the scene has {S} shots{f' (with {refs} references)' if refs else ''} but the model sees at most context_shots={model_cfg.context_shots} at once; "
            "use --mode autoregressive (each shot then sees the most relevant earlier shots) or split the scene"
        )
    conds = {i: s.condition for i, s in enumerate(spec.shots) if s.condition is not None}
    if mode == "joint" and conds:
        raise SceneError(f"shots {sorted(conds)} have a condition; use --mode conditioned (or drop the conditions)")
    if mode == "conditioned" and not conds:
        raise SceneError("--mode conditioned needs at least one shot with a `condition: {image|clip: path, t: 0.0}`")
    if mode == "conditioned" and len({c.t for c in conds.values()}) > 1:
        raise SceneError(
            f"conditions have different t {[(i, c.t) for i, c in conds.items()]}; the sampler holds all "
            "given shots at one t_c, so give every condition the same t"
        )
    if mode in ("autoregressive", "extend") and any(c.t != 0 for c in conds.values()):
        raise SceneError(
            f"in --mode {mode} a condition is used as that shot (clean) and later re-noised to t_c={spec.t_c} "
            f"as history; set t: 0.0 (got {[(i, c.t) for i, c in conds.items()]})"
        )
    if mode == "extend" and set(conds) - {0}:
        raise SceneError(f"in --mode extend only segment 0 can have a condition (the clip to extend), got {sorted(conds)}")

    H, W = bundle.size
    p_t, p_h, p_w = model_cfg.patch
    shapes, frames = [], []
    for i, shot in enumerate(spec.shots):
        f = shot.frames or (1 if shot.condition and shot.condition.image else bundle.frames)
        try:
            shape = tuple(bundle.codec.latent_shape(f, H, W))
        except ValueError as e:
            raise SceneError(f"shot {i}: frames={f} does not fit the checkpoint's codec: {e}") from e
        C, Fl, Hl, Wl = shape
        if Fl % p_t or Hl % p_h or Wl % p_w:
            raise SceneError(
                f"shot {i}: frames={f} at {H}x{W} gives a latent (F, H, W) = {(Fl, Hl, Wl)} that is not a "
                f"multiple of the model's patch {model_cfg.patch}; use frames giving a multiple of {p_t} "
                f"latent frames (the checkpoint was trained with frames={bundle.frames})"
            )
        shapes.append(shape)
        frames.append(f)

    check_memory(shapes, frames, bundle, mode)
    given = {i: condition_latent(c, bundle, frames[i], shapes[i], i) for i, c in conds.items()}
    t_c = next(iter(conds.values())).t if mode == "conditioned" else spec.t_c
    cfg_scale = spec.cfg if spec.cfg is not None else default_cfg(bundle)
    shift = spec.shift if spec.shift is not None else float(bundle.info.get("flow_shift") or 1.0)
    sampler = SamplerConfig(steps=spec.steps, shift=shift, cfg_scale=cfg_scale, t_c=t_c, seed=spec.seed)
    return Plan(spec, mode, shapes, frames, given, sampler, refs)


def load_condition_frames(cond: ConditionSpec, frames: int, fps: float, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8: an image repeated `frames` times (1 by default), or a clip sampled at fps; fitted to size."""
    if cond.image:
        try:
            with Image.open(cond.image) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise SceneError(f"condition image {cond.image} cannot be read: {e}") from e
        return np.repeat(cover_crop(rgb, size)[None], frames, axis=0)
    try:
        return decode_clip(Path(cond.clip).read_bytes(), frames, fps, size)
    except ClipError as e:
        raise SceneError(f"condition clip {cond.clip}: {e}") from e


def condition_latent(cond: ConditionSpec, bundle: InferenceBundle, frames: int, shape: tuple, shot: int) -> Tensor:
    video = load_condition_frames(cond, frames, bundle.fps, bundle.size)
    latent = bundle.codec.encode(torch.from_numpy(video)).float()         # (C, F', H', W')
    if tuple(latent.shape) != tuple(shape):
        raise SceneError(f"shot {shot}: the condition encodes to {tuple(latent.shape)}, expected {tuple(shape)}")
    return latent


# -- generation -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Generation:
    latents: list[Tensor]          # per generated unit (shot, or segment in extend), (C, F, H, W) on CPU
    shots: list[list[int]]         # output shot -> the units it concatenates
    prompts: list[str]             # per unit, as fed to the model
    record: dict                   # what generation.json says


def _scene(bundle: InferenceBundle, plan: Plan) -> tuple[Scene, list[str]]:
    """The model.Scene (prompts + latent shapes) and the prompts as fed to the model."""
    spec, text = plan.spec, bundle.text
    placeholders = [torch.zeros(s) for s in plan.shapes]
    captions = [s.prompt for s in spec.shots]
    if plan.mode != "extend":
        return encode_scene(text, spec.global_, captions, placeholders), [shot_prompt(c) for c in captions]
    prompts = [c.strip() for c in captions]                                # segments: no "[SHOT CUT]"
    rows = encode_prompts(text, [spec.global_] + prompts)                     # (T_i, Dt) real tokens
    return Scene(rows[0], [Shot(r, z) for r, z in zip(rows[1:], placeholders)]), prompts


def generate(bundle: InferenceBundle, plan: Plan, on_step: OnStep | None = None, use_cache: bool = True) -> Generation:
    """Run the plan's mode; latents come back on the CPU with a record of what was done."""
    model, config, S = bundle.model, plan.sampler, len(plan.shapes)
    device = next(model.parameters()).device
    scene, prompts = _scene(bundle, plan)
    negative = negative_features(model.cfg, bundle.text, plan.spec.negative) if config.cfg_scale != 1.0 else None
    given = {i: z.to(device) for i, z in plan.given.items()}
    start = time.perf_counter()
    if plan.mode in ("joint", "conditioned"):
        latents = _sample_with_progress(model, scene, config, plan.mode, given, on_step, negative)
        total = time.perf_counter() - start
        causal = model.cfg.attention == "context_causal"                 # shot i sees shots < i, else all
        history = [list(range(i)) if causal else [j for j in range(S) if j != i] for i in range(S)]
        seconds, cache = [total / S] * S, ["none"] * S
    else:
        if plan.mode == "autoregressive":
            feats = prompt_features(bundle.text, prompts)
            cap, R = model.cfg.context_shots - 1, plan.references
            if R and cap <= R:
                raise SceneError(f"{R} references leave no room for history: the model sees at most "
                                 f"context_shots={model.cfg.context_shots} shots at once; give at most {cap - 1} references")

            def select(k: int) -> list[int]:                            # references are always seen
                if k <= R:
                    return list(range(k))
                return list(range(R)) + [j for j in relevant_history(feats, k, cap - R) if j >= R]
        else:
            select = lambda k: [k - 1] if k else []                      # noqa: E731
        step = None if on_step is None else (lambda k, done, n: on_step(f"shot {k + 1}/{S}", done, n))
        out = sample_shots(model, scene, config, select, given, use_cache=use_cache, on_step=step, negative=negative)
        latents, history, seconds, cache = out.latents, out.history, out.seconds, out.cache
        total = time.perf_counter() - start
    latents = [z.detach().float().cpu() for z in latents]
    units = [list(range(S))] if plan.mode == "extend" else [[i] for i in range(plan.references, S)]
    record = _record(bundle, plan, prompts, history, seconds, cache, total, device)
    return Generation(latents, units, prompts, record)


def _sample_with_progress(model, scene, config, mode, given, on_step, negative) -> list[Tensor]:
    """model.sampling.sample, with on_step fed by a forward hook (one step = one forward per branch)."""
    branches = 1 if config.cfg_scale == 1.0 else 2
    calls = [0]

    def hook(*_):
        calls[0] += 1
        if on_step and calls[0] % branches == 0:
            on_step("scene", calls[0] // branches, config.steps)

    handle = model.register_forward_hook(hook)
    try:
        return sample(model, scene, config, mode=mode, given=given or None, negative=negative)
    finally:
        handle.remove()


def _record(bundle, plan, prompts, history, seconds, cache, total, device) -> dict:
    spec = plan.spec
    shots = []
    for i, shot in enumerate(spec.shots):
        cond = shot.condition.model_dump(exclude_none=True) if shot.condition else None
        shots.append({
            "reference": i < plan.references, "prompt": prompts[i], "frames": plan.frames[i], "latent_shape": list(plan.shapes[i]),
            "condition": cond, "history": history[i], "seconds": round(seconds[i], 4), "kv_cache": cache[i],
        })
    return {
        "mode": plan.mode, "global": spec.global_, "seed": spec.seed, "steps": spec.steps, "cfg": plan.sampler.cfg_scale,
        "references": plan.references,
        # the unconditional branch's prompt (null = the null prompt); unused when cfg is 1
        "negative": spec.negative if spec.negative is not None else default_negative(bundle.model.cfg),
        "shift": plan.sampler.shift, "t_c": plan.sampler.t_c,
        "checkpoint": {"path": str(bundle.path), "step": bundle.info.get("step"), "run": bundle.info.get("run", "")},
        "model": {"attention": bundle.model.cfg.attention, "context_shots": bundle.model.cfg.context_shots},
        "size": list(bundle.size), "fps": bundle.fps, "device": str(device),
        "shots": shots, "seconds": round(total, 4),
        "history_rule": {
            "joint": "one joint attention over the scene (context-causal: earlier shots only)",
            "conditioned": "one joint attention over the scene (context-causal: earlier shots only)",
            "autoregressive": f"the <= {bundle.model.cfg.context_shots - 1} earlier shots with the most similar prompts",
            "extend": "the previous segment",
        }[plan.mode],
    }


# -- outputs ----------------------------------------------------------------------------------
def write_outputs(result: Generation, bundle: InferenceBundle, out: str | Path) -> list[Path]:
    """shot-000.mp4 ..., scene.mp4 (all shots, with cuts), sheet.png, latents.safetensors, generation.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    decoded = [bundle.codec.decode(z).numpy() for z in result.latents]         # per unit (F, H, W, 3) uint8
    shots = [np.concatenate([decoded[u] for u in units]) for units in result.shots]
    written = []
    for i, frames in enumerate(shots):
        written.append(out / f"shot-{i:03d}.mp4")
        written[-1].write_bytes(encode_mp4(frames, bundle.fps))
    written.append(out / "scene.mp4")
    written[-1].write_bytes(encode_mp4(np.concatenate(shots), bundle.fps))
    labels = [f"shot {i}: " + " / ".join(result.prompts[u] for u in units) for i, units in enumerate(result.shots)]
    sheet = frames_sheet(list(zip(labels, shots)), title=f"{result.record['mode']}  |  {result.record['global']}")
    written.append(out / "sheet.png")
    sheet.save(written[-1])
    blob = safetensors_bytes({f"unit-{i:03d}": z.contiguous() for i, z in enumerate(result.latents)})
    written.append(out / "latents.safetensors")
    written[-1].write_bytes(blob)
    record = result.record | {"latents_sha256": hashlib.sha256(blob).hexdigest(),
                              "files": [p.name for p in written] + ["generation.json"]}
    written.append(out / "generation.json")
    written[-1].write_text(json.dumps(record, indent=2) + "\n")
    return written
