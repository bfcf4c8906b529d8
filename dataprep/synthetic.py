"""Procedural films with ground truth: the test bed of shot detection, scene grouping and captions.

A film is a few *scenes*. A scene has its own environment (a high-contrast textured backdrop in
its own palette, under a soft vertical gradient) and 1-3 characters (shapes with a colour and a
pattern) that recur in each of the scene's 2-5 *shots*. Shots differ by framing (close / medium /
wide = zoom of the whole layout) and camera position; inside a shot the camera pans slowly and
the characters move, so consecutive frames change little. Hence, by construction:
- every hard cut, also between shots of one scene, is a large content jump (the backdrop texture
  is re-scaled and shifted) that PySceneDetect's ContentDetector finds at its default threshold;
- shots of one scene share a palette (similar colour histograms); scenes do not.
Everything is drawn from `numpy.random.default_rng([cfg.seed, film_index])`: the same seed gives
the same truth and the same decoded pixels (x264 runs single-threaded).

Hidden attributes (`captions="hidden"`, what `lct demo` uses): the same pixels, but no caption
names a colour, shape, pattern, palette or texture: characters are named by ID, shots by framing
and action only. The appearance of every scene (drawn at random per scene) is in the truth JSON's
`scenes[i].hidden`, so only cross-shot attention can keep it consistent across a scene's shots.

Scales (`texture_scale`, `character_scale`, default 1): the backdrop's texture period and the
characters' radius are multiplied after the plan is drawn, so the truth and every random choice stay
the same; for films that are curated down to a few pixels, where the default texture aliases.

Hard cases (`hard_cases=True`, a few films per set): gradual transitions between scenes (fade
through black or dissolve, 8-15 frames) and flashes (1-2 bright frames inside a shot, not a cut).
The boundary of a gradual transition spanning frames [a, b) is its midpoint m = a + (b - a) // 2:
the earlier shot ends at m and the later one starts at m.

Files written per film, `<name>` = `synth-000`, `synth-001`, ...:
- `<name>.mp4`: H.264 (libx264, yuv420p), fps in {24, 25, 30000/1001}, small sizes.
- `<name>.truth.json` (frames are 0-based, `end_frame` exclusive)::

    {"version": 1, "seed": 0, "fps": "30000/1001", "width": 320, "height": 240, "n_frames": 300,
     "shots": [{"start_frame": 0, "end_frame": 40, "scene_index": 0,
                "transition_in": "none|cut|fade|dissolve", "framing": "close|medium|wide",
                "characters": [1, 2]}],
     "scenes": [{"start_frame": 0, "end_frame": 120, "shot_indices": [0, 1, 2], "environment": "...",
                 "characters": [{"id": 1, "description": "a red disc with white stripes"}]}],
     "flashes": [frame, ...],
     "transitions": [{"kind": "fade|dissolve", "start_frame": a, "end_frame": b}]}

  Character ids are per scene, from 1, as in the LCT paper's captions.
- `<name>.captions.json`, the *sidecar caption* format that `lct curate` also accepts beside real
  films (a public contract). Times are seconds from the film start; consumers match detected
  shots to sidecar shots by time overlap::

    {"version": 1,
     "scenes": [{"start_s": 0.0, "end_s": 5.0, "global_caption": "[Character] Character 1: a red
                 disc with white stripes. Character 2: ... [Environment] a deep blue hall with a
                 checkerboard floor. [Story] ..."}],
     "shots": [{"start_s": 0.0, "end_s": 1.7, "caption": "Close-up. Character 1 rolls to the left."}]}
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

MIN_SHOT_FRAMES = 20  # ContentDetector merges cuts closer than 15 frames (its min_scene_len)
FLASH_MARGIN = 20  # frames between a flash and its shot's ends, so the detector's merge filter keeps real cuts
ZOOM = {"close": 2.4, "medium": 1.4, "wide": 0.7}  # screen pixels per world pixel
FRAMING_TEXT = {"close": "Close-up", "medium": "Medium shot", "wide": "Wide shot"}

# Scene palettes: (setting, dark main colour, light main colour, accent). The two main colours
# differ in value *and* saturation/hue, so a re-framed backdrop changes most HSV pixel values.
PALETTES = [
    ("a deep blue hall", (20, 30, 110), (130, 190, 250), (235, 240, 250)),
    ("a sandy desert courtyard", (30, 70, 150), (240, 210, 150), (230, 130, 40)),
    ("a green forest clearing", (10, 60, 50), (190, 230, 80), (250, 240, 150)),
    ("a purple night room", (35, 15, 60), (190, 140, 240), (250, 150, 210)),
    ("a pink candy shop", (170, 20, 100), (255, 210, 230), (140, 230, 210)),
    ("a red lava cave", (70, 15, 45), (250, 150, 20), (255, 230, 80)),
    ("a teal underwater grotto", (0, 70, 80), (90, 220, 210), (200, 250, 255)),
    ("a grey stone cellar", (50, 55, 75), (215, 200, 165), (150, 150, 150)),
]
TEXTURES = {
    "checker": "a checkerboard floor",
    "stripes": "diagonal stripes on the walls",
    "tiles": "a mosaic of square tiles",
    "dots": "polka-dot wallpaper",
    "bricks": "brick walls",
}
COLOURS = {
    "red": (220, 30, 30), "yellow": (250, 220, 30), "green": (40, 180, 60), "blue": (40, 80, 230),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (250, 140, 0),
    "purple": (140, 50, 200), "cyan": (40, 220, 230), "magenta": (230, 40, 200),
}
SHAPES = {"disc": "rolls", "square": "slides", "triangle": "glides", "star": "drifts", "diamond": "floats"}
PATTERNS = {"plain": "", "stripes": "{ink} stripes", "dots": "{ink} dots", "checks": "a {ink} checker pattern"}


class SynthConfig(BaseModel):
    """What `lct synth` makes. Film i uses fps[i % len(fps)] and a size cycling through `sizes`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_films: int = Field(6, ge=1, description="Number of films.")
    seed: int = Field(0, ge=0, description="Master seed; film i is drawn from default_rng([seed, i]).")
    scenes_per_film: tuple[int, int] = Field((2, 3), description="Inclusive range of scenes per film.")
    shots_per_scene: tuple[int, int] = Field((2, 5), description="Inclusive range of shots per scene.")
    shot_seconds: tuple[float, float] = Field((1.0, 3.0), description="Range of shot durations in seconds.")
    max_film_seconds: float = Field(
        15.0, gt=0, description="Shots are dropped (down to shots_per_scene[0] per scene) while a film is longer."
    )
    sizes: list[tuple[int, int]] = Field(
        [(320, 240), (384, 216), (256, 256)], min_length=1, description="Frame sizes (width, height), even."
    )
    fps: list[str] = Field(["24", "25", "30000/1001"], min_length=1, description="Frame rates as exact fractions.")
    hard_cases: bool = Field(
        True, description="Odd films get fades/dissolves between scenes; films 2, 5, 8... get a flash."
    )
    crf: int = Field(18, ge=0, le=51, description="x264 constant rate factor.")
    captions: Literal["full", "hidden"] = Field(
        "full", description="full: captions name every attribute of a scene (palette, texture, character colour, "
        "shape, pattern); hidden: appearance is never written in a caption (characters by ID, framing and "
        "action only), it is in the truth JSON's `hidden` (the test bed of cross-shot consistency).")
    texture_scale: float = Field(
        1.0, gt=0, le=8, description="Multiplies every backdrop's texture period: coarser patterns that stay "
        "patterns when a film is curated down to a few pixels (the demo trains on 16x16 frames).")
    character_scale: float = Field(
        1.0, gt=0, le=8, description="Multiplies the characters' drawn radius (motion and framing are unchanged).")

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        for name in ("scenes_per_film", "shots_per_scene", "shot_seconds"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
        for w, h in self.sizes:
            if w % 2 or h % 2 or w < 64 or h < 64:
                raise ValueError(f"sizes must be even and at least 64x64 for H.264, got {w}x{h}")
        rates = [Fraction(f) for f in self.fps]  # raises on text that is not a fraction
        if self.shot_seconds[0] * min(rates) < MIN_SHOT_FRAMES:
            raise ValueError(
                f"shot_seconds[0]={self.shot_seconds[0]} gives shots under {MIN_SHOT_FRAMES} frames at "
                f"{min(rates)} fps; ContentDetector cannot separate cuts that close. Raise it."
            )
        return self


# ---------------------------------------------------------------- the plan (pure data)


@dataclass
class Character:
    id: int  # per scene, from 1
    shape: str
    colour: str
    pattern: str
    home: np.ndarray  # (2,) world position (x, y)

    def describe(self) -> str:
        if self.pattern == "plain":
            return f"a plain {self.colour} {self.shape}"
        ink = "black" if self.colour in ("white", "yellow", "cyan") else "white"
        return f"a {self.colour} {self.shape} with " + PATTERNS[self.pattern].format(ink=ink)


@dataclass
class Environment:
    palette: int  # index into PALETTES
    texture: str  # key of TEXTURES
    cell: float  # texture period in world pixels
    gradient: float  # brightness change from top to bottom of the world
    tilt: float  # texture rotation, radians: no edge is pixel-aligned, so a pan moves edges smoothly
    lut: np.ndarray  # (8, 8) colour index per tile (tiles, bricks)

    def describe(self) -> str:
        return f"{PALETTES[self.palette][0]} with {TEXTURES[self.texture]}"


@dataclass
class SynthShot:
    start_frame: int
    end_frame: int
    scene_index: int
    framing: str
    camera: np.ndarray  # (2,) world point at the frame centre at the shot's first frame
    pan: np.ndarray  # (2,) camera velocity, world px / s
    motion: dict[int, tuple[np.ndarray, np.ndarray]]  # character id -> (position at start, velocity)
    transition_in: str = "cut"
    characters: list[int] = field(default_factory=list)  # visible at the shot's middle frame


@dataclass
class SynthScene:
    environment: Environment
    characters: list[Character]
    shot_indices: list[int]


@dataclass
class FilmSpec:
    name: str
    seed: int
    fps: Fraction
    width: int
    height: int
    crf: int
    scenes: list[SynthScene]
    shots: list[SynthShot]
    flashes: list[int]
    transitions: list[dict]  # {"kind", "start_frame", "end_frame"}
    captions: str = "full"  # SynthConfig.captions
    character_scale: float = 1.0  # SynthConfig.character_scale

    @property
    def n_frames(self) -> int:
        return self.shots[-1].end_frame


def plan_film(seed: int, index: int, cfg: SynthConfig) -> FilmSpec:
    """Draw film `index` of the set (see _plan); cfg.captions does not change the pixels. The scales
    apply after the draw, so every random choice is the same at any scale."""
    spec = _plan(seed, index, cfg)
    spec.captions, spec.character_scale = cfg.captions, cfg.character_scale
    for scene in spec.scenes:
        scene.environment.cell *= cfg.texture_scale
    return spec


def _plan(seed: int, index: int, cfg: SynthConfig) -> FilmSpec:
    """Draw film `index` of the set: scenes, shots, motion, hard cases. Pure and deterministic."""
    rng = np.random.default_rng([seed, index])
    fps = Fraction(cfg.fps[index % len(cfg.fps)])
    width, height = cfg.sizes[(index + index // len(cfg.fps)) % len(cfg.sizes)]
    world = np.array([2.0 * width, 2.0 * height])  # characters live here; the backdrop is endless

    # 1. scenes: palette, texture, characters; shot durations, trimmed to max_film_seconds
    n_scenes = int(rng.integers(cfg.scenes_per_film[0], cfg.scenes_per_film[1] + 1))
    palettes = rng.permutation(len(PALETTES))
    durations = [list(rng.uniform(*cfg.shot_seconds, size=rng.integers(cfg.shots_per_scene[0], cfg.shots_per_scene[1] + 1)))
                 for _ in range(n_scenes)]
    while sum(map(sum, durations)) > cfg.max_film_seconds and max(map(len, durations)) > cfg.shots_per_scene[0]:
        max(durations, key=len).pop()
    scenes = []
    for s in range(n_scenes):
        env = Environment(int(palettes[s % len(PALETTES)]), str(rng.choice(list(TEXTURES))),
                          float(rng.uniform(0.10, 0.14) * min(width, height)), float(rng.uniform(-0.15, 0.15)),
                          float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)),
                          rng.integers(0, 3, size=(8, 8)))
        n_chars = int(rng.integers(1, 4))
        picks = zip(rng.choice(list(SHAPES), n_chars, replace=False), rng.choice(list(COLOURS), n_chars, replace=False),
                    rng.choice(list(PATTERNS), n_chars))
        chars = [Character(i + 1, str(sh), str(co), str(pa), world * rng.uniform(0.4, 0.6, size=2))
                 for i, (sh, co, pa) in enumerate(picks)]
        scenes.append(SynthScene(env, chars, []))

    # 2. shots: framing differs from the previous shot; the camera frames one, two or all characters
    shots, start, radius = [], 0, char_radius(width, height)
    for s, scene in enumerate(scenes):
        framing = "wide"
        for k, seconds in enumerate(durations[s]):
            if k:
                framing = str(rng.choice([f for f in ZOOM if f != framing]))
            n = max(MIN_SHOT_FRAMES, round(seconds * fps))
            motion = {c.id: (c.home + rng.normal(0, radius, 2), _heading(rng) * rng.uniform(0.02, 0.05) * min(width, height))
                      for c in scene.characters}
            subjects = {"close": 1, "medium": 2, "wide": len(scene.characters)}[framing]
            chosen = rng.permutation(len(scene.characters))[:subjects]
            camera = np.mean([motion[scene.characters[i].id][0] for i in chosen], axis=0) + rng.normal(0, radius, 2)
            pan = _heading(rng) * rng.uniform(6, 12) / ZOOM[framing]  # 6-12 screen px / s
            shot = SynthShot(start, start + n, s, framing, camera, pan, motion, "none" if start == 0 else "cut")
            shot.characters = [c for c in motion if _on_screen(shot, c, (n // 2) / float(fps), width, height)]
            scene.shot_indices.append(len(shots))
            shots.append(shot)
            start += n

    # 3. hard cases: gradual scene changes in odd films, a flash in films 2, 5, 8, ...
    transitions, flashes = [], []
    if cfg.hard_cases and index % 2 == 1:
        for scene in scenes[1:]:
            shot = shots[scene.shot_indices[0]]
            shot.transition_in = str(rng.choice(["fade", "dissolve"]))
            length = int(rng.integers(8, 16))
            a = shot.start_frame - length // 2
            transitions.append({"kind": shot.transition_in, "start_frame": a, "end_frame": a + length})
    if cfg.hard_cases and index % 3 == 2:
        room = [sh for sh in shots if sh.end_frame - sh.start_frame >= 2 * FLASH_MARGIN + 2]
        if room:
            shot, n = room[int(rng.integers(len(room)))], int(rng.integers(1, 3))
            f = int(rng.integers(shot.start_frame + FLASH_MARGIN, shot.end_frame - FLASH_MARGIN - n + 1))
            flashes = list(range(f, f + n))
    return FilmSpec(f"synth-{index:03d}", seed, fps, width, height, cfg.crf, scenes, shots, flashes, transitions)


def _heading(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(angle), math.sin(angle)])


def char_radius(width: int, height: int) -> float:
    return 0.06 * min(width, height)  # world pixels


def _screen_pos(shot: SynthShot, char_id: int, t: float, width: int, height: int) -> np.ndarray:
    p0, v = shot.motion[char_id]
    camera = shot.camera + shot.pan * t
    return (p0 + v * t - camera) * ZOOM[shot.framing] + np.array([width, height]) / 2


def _on_screen(shot: SynthShot, char_id: int, t: float, width: int, height: int) -> bool:
    x, y = _screen_pos(shot, char_id, t, width, height)
    return bool(0 <= x < width and 0 <= y < height)


# ---------------------------------------------------------------- drawing (pure functions of the plan)


def draw_backdrop(env: Environment, xs: np.ndarray, ys: np.ndarray, world_h: float) -> np.ndarray:
    """Backdrop at world columns xs (W,) and rows ys (H,) -> (H, W, 3) uint8."""
    cos, sin = np.float32(math.cos(env.tilt) / env.cell), np.float32(math.sin(env.tilt) / env.cell)
    x, y = xs.astype(np.float32)[None, :], ys.astype(np.float32)[:, None]
    u, v = x * cos + y * sin, y * cos - x * sin  # (H, W) texture coordinates in cells, tilted
    floor = lambda a: np.floor(a).astype(np.int32)
    if env.texture == "checker":
        idx = (floor(u) + floor(v)) & 1  # & is a fast floor-modulo for powers of two, also below zero
    elif env.texture == "stripes":
        idx = np.array([0, 1, 0, 2])[floor(u + v) & 3]
    elif env.texture == "tiles":
        idx = env.lut[floor(v) & 7, floor(u) & 7]
    elif env.texture == "dots":
        iu, iv = floor(u), floor(v)
        inside = (u - iu - 0.5) ** 2 + (v - iv - 0.5) ** 2 < 0.12
        idx = np.where(inside, 1 + ((iu + iv) & 1), 0)
    else:  # bricks: rows of 2-cell bricks in colours 0 and 1, every other row shifted by a cell, accent mortar
        row = floor(v * 2)  # (H, W)
        uu = u + (row & 1)  # (H, W)
        brick = floor(uu / 2)
        mortar = ((v * 2 - row) < 0.25) | ((uu / 2 - brick) < 0.1)  # >= 2 px wide: no aliasing flicker
        idx = np.where(mortar, 2, env.lut[row & 7, brick & 7] & 1)
    shade = 1 + env.gradient * (ys / world_h - 0.5)  # (H,) soft vertical gradient
    colours = np.array(PALETTES[env.palette][1:], dtype=np.float32)  # (3 colours, 3 channels)
    rows = np.clip(shade[:, None, None] * colours, 0, 255).astype(np.uint8)  # (H, 3, 3)
    flat = (3 * np.arange(len(ys)))[:, None] + idx  # (H, W) row-major index into rows as (H * 3, 3)
    return np.take(rows.reshape(-1, 3), flat, axis=0)  # (H, W, 3)


@functools.lru_cache(maxsize=64)
def draw_sprite(shape: str, colour: str, pattern: str, r: float) -> tuple[np.ndarray, np.ndarray]:
    """A character at radius r screen px -> colours (n, n, 3) uint8 and mask (n, n) bool (cached: don't write)."""
    n = 2 * math.ceil(r) + 1
    u = (np.arange(n) - n // 2) / r
    u, v = u[None, :], u[:, None]  # x right, y down, in radii
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    mask = {
        "disc": rho <= 1,
        "square": np.maximum(abs(u), abs(v)) <= 0.8,
        "diamond": abs(u) + abs(v) <= 1,
        "triangle": (v <= 0.7) & (abs(u) <= (v + 0.9) * 0.6),
        "star": rho <= 0.45 + 0.55 * np.cos(2.5 * (theta + math.pi / 2)) ** 4,
    }[shape]
    ink = {
        "plain": np.zeros_like(mask),
        "stripes": np.floor((u + 2) * 2.5) % 2 == 0,
        "dots": (u * 2 + 0.5 - np.floor(u * 2 + 0.5) - 0.5) ** 2 + (v * 2 + 0.5 - np.floor(v * 2 + 0.5) - 0.5) ** 2 < 0.05,
        "checks": (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0,
    }[pattern]
    ink_rgb = (20, 20, 20) if colour in ("white", "yellow", "cyan") else (250, 250, 250)
    rgb = np.where(ink[..., None], np.array(ink_rgb, np.uint8), np.array(COLOURS[colour], np.uint8))
    return rgb.astype(np.uint8), np.broadcast_to(mask, (n, n))


def draw_shot_frame(spec: FilmSpec, shot: SynthShot, t: float) -> np.ndarray:
    """Shot `shot` at t seconds from its start (any t: transitions draw beyond the ends) -> (H, W, 3) uint8."""
    w, h, zoom = spec.width, spec.height, ZOOM[shot.framing]
    scene = spec.scenes[shot.scene_index]
    camera = shot.camera + shot.pan * t
    xs = camera[0] + (np.arange(w) + 0.5 - w / 2) / zoom  # (W,) world x of each column
    ys = camera[1] + (np.arange(h) + 0.5 - h / 2) / zoom  # (H,)
    img = draw_backdrop(scene.environment, xs, ys, 2.0 * h)
    for char in scene.characters:
        rgb, mask = draw_sprite(char.shape, char.colour, char.pattern,
                                char_radius(w, h) * spec.character_scale * zoom)
        x, y = np.round(_screen_pos(shot, char.id, t, w, h)).astype(int) - rgb.shape[0] // 2
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + rgb.shape[1], w), min(y + rgb.shape[0], h)
        if x0 < x1 and y0 < y1:
            sub, m = rgb[y0 - y:y1 - y, x0 - x:x1 - x], mask[y0 - y:y1 - y, x0 - x:x1 - x]
            img[y0:y1, x0:x1][m] = sub[m]
    return img


def draw_frame(spec: FilmSpec, f: int, shot_of: list[int]) -> np.ndarray:
    """Film frame f -> (H, W, 3) uint8, with transitions and flashes applied. shot_of[f] = shot index."""
    k = shot_of[f]
    draw = lambda i: draw_shot_frame(spec, spec.shots[i], (f - spec.shots[i].start_frame) / float(spec.fps))
    img = draw(k)
    for tr in spec.transitions:
        a, b = tr["start_frame"], tr["end_frame"]
        if a <= f < b:
            m = a + (b - a) // 2
            if tr["kind"] == "dissolve":  # blend the outgoing shot into the incoming one
                later = shot_of[m]
                alpha = (f - a + 0.5) / (b - a)
                img = (draw(later - 1) * (1 - alpha) + draw(later) * alpha).astype(np.uint8)
            else:  # fade: the outgoing shot to black by m - 1, then the incoming one up from black
                gain = (m - 1 - f) / (m - a) if f < m else (f - m + 1) / (b - m)
                img = (img * gain).astype(np.uint8)
    if f in spec.flashes:
        img = (img * 0.25 + 255 * 0.75).astype(np.uint8)
    return img


# ---------------------------------------------------------------- writing films, truth and captions


def render_film(spec: FilmSpec, out_dir: Path) -> Path:
    """Encode the film and write its truth and sidecar captions beside it; returns the mp4 path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.mp4"
    shot_of = [i for i, sh in enumerate(spec.shots) for _ in range(sh.start_frame, sh.end_frame)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.time_base = 1 / spec.fps
        stream.thread_count = 1
        # x264's macroblock-tree rate control made identical input encode differently now and then
        # (measured: ~1 run in 8 with PyAV 18.1); without it reruns are bit-exact.
        stream.options = {"crf": str(spec.crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        for f in range(spec.n_frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(draw_frame(spec, f, shot_of)), format="yuv420p")
            frame.pts = f
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    path.with_suffix(".truth.json").write_text(json.dumps(truth_of(spec), indent=1))
    path.with_suffix(".captions.json").write_text(json.dumps(captions_of(spec), indent=1))
    return path


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H * 3 / 2, W) planar Y, U, V, BT.601 limited range (what decoders assume).
    Converted here, by a pure function, so the encoder's input is exactly reproducible."""
    h, w, _ = img.shape
    m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], np.float32) / 255
    ycc = img.astype(np.float32) @ m.T + np.array([16, 128, 128], np.float32)  # (H, W, 3)
    chroma = ycc[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))  # (H/2, W/2, 2)
    planes = [ycc[..., 0].ravel(), chroma[..., 0].ravel(), chroma[..., 1].ravel()]
    return np.clip(np.round(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def make_films(cfg: SynthConfig, out_dir: Path, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Plan and render films synth-000 ... of `cfg` into out_dir; returns the mp4 paths."""
    paths = []
    for i in range(cfg.n_films):
        paths.append(render_film(plan_film(cfg.seed, i, cfg), out_dir))
        if progress is not None:
            progress(i + 1, cfg.n_films)
    return paths


def truth_of(spec: FilmSpec) -> dict:
    shots = [{"start_frame": sh.start_frame, "end_frame": sh.end_frame, "scene_index": sh.scene_index,
              "transition_in": sh.transition_in, "framing": sh.framing, "characters": sh.characters}
             for sh in spec.shots]
    scenes = [{"start_frame": spec.shots[sc.shot_indices[0]].start_frame,
               "end_frame": spec.shots[sc.shot_indices[-1]].end_frame, "shot_indices": sc.shot_indices,
               "environment": sc.environment.describe(),
               "characters": [{"id": c.id, "description": c.describe()} for c in sc.characters]}
              for sc in spec.scenes]
    hidden = [{"palette": PALETTES[sc.environment.palette][0], "colours": [list(c) for c in PALETTES[sc.environment.palette][1:]],
               "texture": sc.environment.texture,
               "characters": [{"id": c.id, "shape": c.shape, "colour": c.colour, "rgb": list(COLOURS[c.colour]),
                               "pattern": c.pattern} for c in sc.characters]}
              for sc in spec.scenes]
    for scene, h in zip(scenes, hidden):
        scene["hidden"] = h                      # appearance; absent from the captions when captions="hidden"
    return {"version": 1, "seed": spec.seed, "fps": str(spec.fps), "width": spec.width, "height": spec.height,
            "n_frames": spec.n_frames, "captions": spec.captions, "shots": shots, "scenes": scenes,
            "flashes": spec.flashes, "transitions": spec.transitions}


def captions_of(spec: FilmSpec) -> dict:
    """The sidecar captions: a two-tier LCT caption per scene, one caption per shot.

    captions="hidden": no colour, shape, pattern, palette or texture in any caption; characters
    are named by ID, shots by framing and action ("moves"), the environment only as "a room".
    """
    if spec.captions == "hidden":
        return _hidden_captions(spec)
    sec = lambda frame: round(frame / float(spec.fps), 6)
    scenes, shots = [], []
    for sc in spec.scenes:
        first, last = spec.shots[sc.shot_indices[0]], spec.shots[sc.shot_indices[-1]]
        cast = " ".join(f"Character {c.id}: {c.describe()}." for c in sc.characters)
        names = " and ".join(", ".join(f"Character {c.id}" for c in sc.characters).rsplit(", ", 1))
        verb = "moves" if len(sc.characters) == 1 else "move"
        story = f"{names} {verb} around {PALETTES[sc.environment.palette][0]}, seen from near and far."
        scenes.append({"start_s": sec(first.start_frame), "end_s": sec(last.end_frame),
                       "global_caption": f"[Character] {cast} [Environment] {sc.environment.describe()}. [Story] {story}"})
    for sh in spec.shots:
        shapes = {c.id: c.shape for c in spec.scenes[sh.scene_index].characters}
        acts = [f"Character {i} {SHAPES[shapes[i]]} {_direction(sh.motion[i][1])}" for i in sh.characters]
        text = f"{FRAMING_TEXT[sh.framing]}" + (f". {'; '.join(acts)}." if acts else " of the empty room.")
        shots.append({"start_s": sec(sh.start_frame), "end_s": sec(sh.end_frame),
                      "caption": f"{text} The camera pans {_direction(sh.pan).removeprefix('to the ')}."})
    return {"version": 1, "scenes": scenes, "shots": shots}


def _hidden_captions(spec: FilmSpec) -> dict:
    sec = lambda frame: round(frame / float(spec.fps), 6)
    scenes, shots = [], []
    for sc in spec.scenes:
        first, last = spec.shots[sc.shot_indices[0]], spec.shots[sc.shot_indices[-1]]
        cast = " ".join(f"Character {c.id}." for c in sc.characters)
        names = " and ".join(", ".join(f"Character {c.id}" for c in sc.characters).rsplit(", ", 1))
        verb = "moves" if len(sc.characters) == 1 else "move"
        scenes.append({"start_s": sec(first.start_frame), "end_s": sec(last.end_frame),
                       "global_caption": f"[Character] {cast} [Environment] a room. [Story] {names} {verb} around the room, "
                                         "seen from near and far."})
    for sh in spec.shots:
        acts = [f"Character {i} moves {_direction(sh.motion[i][1])}" for i in sh.characters]
        text = f"{FRAMING_TEXT[sh.framing]}" + (f". {'; '.join(acts)}." if acts else " of the empty room.")
        shots.append({"start_s": sec(sh.start_frame), "end_s": sec(sh.end_frame),
                      "caption": f"{text} The camera pans {_direction(sh.pan).removeprefix('to the ')}."})
    return {"version": 1, "scenes": scenes, "shots": shots}


def _direction(v: np.ndarray) -> str:
    if abs(v[0]) >= abs(v[1]):
        return "to the right" if v[0] > 0 else "to the left"
    return "downward" if v[1] > 0 else "upward"


# ---------------------------------------------------------------- reading truth back


def load_truth(mp4_path: Path) -> dict:
    path = Path(mp4_path).with_suffix(".truth.json")
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth beside {mp4_path}: expected {path} (made by `lct synth`)")
    return json.loads(path.read_text())


def hard_cuts(truth: dict) -> list[int]:
    """Frames where a shot starts by a hard cut (not frame 0, not a gradual transition)."""
    return [sh["start_frame"] for sh in truth["shots"] if sh["transition_in"] == "cut"]


def ambiguous_frames(truth: dict) -> set[int]:
    """Frames where a detected cut is neither right nor wrong: inside gradual transitions, and on a
    flash or the frame after it. Drop predicted cuts within your tolerance of these before scoring."""
    frames = {f + d for f in truth["flashes"] for d in (0, 1)}
    for tr in truth["transitions"]:
        frames.update(range(tr["start_frame"], tr["end_frame"] + 1))
    return frames


def cut_f1(pred: list[int], truth: list[int], tol: int) -> tuple[float, float, float]:
    """(precision, recall, f1) of predicted cut frames against true ones, one-to-one within ±tol."""
    free = sorted(pred)
    matched = 0
    for t in sorted(truth):
        near = [p for p in free if abs(p - t) <= tol]
        if near:
            free.remove(min(near, key=lambda p: abs(p - t)))
            matched += 1
    precision = matched / len(pred) if pred else 1.0
    recall = matched / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
