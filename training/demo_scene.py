"""A scene file for `lct generate` made from a held-out scene of a curated dataset.

Its global prompt and per-shot prompts (at most 4 shots), and the first frame of its first shot
saved as `condition.png` and attached to shot 0 as a clean (t = 0) condition. Modes that do not
take conditions (joint) get the same file without it: `scene.yaml` and `scene-plain.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from PIL import Image

from dataprep.dataset import heldout_keys, load_scenes
from dataprep.media import read_frames

MAX_SHOTS = 4


def demo_scene(dataset: Path, directory: Path, heldout: int, steps: int, seed: int = 0,
               cfg: float | None = None) -> Path:
    """Write directory/scene.yaml (+ condition.png, scene-plain.yaml); returns scene.yaml.
    cfg: the scene file's guidance scale (None: left out, the checkpoint's default)."""
    keys = heldout_keys(dataset, max(1, heldout))
    (scene,) = load_scenes(dataset, keys[:1])
    directory.mkdir(parents=True, exist_ok=True)
    frames, _ = read_frames(scene.mp4s[0])
    Image.fromarray(frames[0]).save(directory / "condition.png")
    shots = [{"prompt": c or "(no caption)"} for c in scene.captions[:MAX_SHOTS]]
    plain = {"global": scene.global_caption, "shots": shots, "seed": seed, "steps": steps}
    if cfg is not None:
        plain["cfg"] = cfg
    (directory / "scene-plain.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    shots = [dict(shots[0], condition={"image": "condition.png", "t": 0.0})] + shots[1:]
    (directory / "scene.yaml").write_text(yaml.safe_dump(dict(plain, shots=shots), sort_keys=False))
    return directory / "scene.yaml"
