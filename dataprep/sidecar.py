"""Sidecar captions: `<film stem>.captions.json` beside a film, matched to detected shots by time.

Written by `dataprep/synthetic.py`, accepted beside real films. A public contract:

    {"version": 1,
     "scenes": [{"start_s": 0.0, "end_s": 5.0, "global_caption": "[Character] ... [Environment] ... [Story] ..."}],
     "shots":  [{"start_s": 0.0, "end_s": 1.7, "caption": "Character 1 slides to the left, close-up"}]}

The film task reads it (`find_sidecar`, a local path or an fsspec URL); the caption stage
matches it to each kept shot (`sidecar_caption`) and scene (`sidecar_global`). Plain JSON and
arithmetic: importing this module loads no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fsspec

from dataprep.errors import FilmError
from dataprep.sources import is_url, local_copy

MIN_SHOT_OVERLAP = 0.5  # a sidecar shot caption must cover at least this share of the detected shot


@dataclass(frozen=True)
class SidecarShot:
    start_s: float
    end_s: float
    caption: str


@dataclass(frozen=True)
class SidecarScene:
    start_s: float
    end_s: float
    global_caption: str


@dataclass(frozen=True)
class Sidecar:
    scenes: list[SidecarScene]
    shots: list[SidecarShot]


def _entries(data: dict, key: str, text_key: str, path: Path) -> list[tuple[float, float, str]]:
    """Validated (start_s, end_s, text) of data[key]; FilmError naming the first bad entry."""
    items = data.get(key)
    if not isinstance(items, list):
        raise FilmError(f"bad sidecar captions: {path}: '{key}' must be a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        where = f"{path}: {key}[{i}]"
        if not isinstance(item, dict):
            raise FilmError(f"bad sidecar captions: {where} must be an object, got {item!r:.80}")
        start, end, text = item.get("start_s"), item.get("end_s"), item.get(text_key)
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (start, end)):
            raise FilmError(f"bad sidecar captions: {where} needs numeric start_s and end_s, got {start!r}, {end!r}")
        if not 0 <= start < end:
            raise FilmError(f"bad sidecar captions: {where} needs 0 <= start_s < end_s, got {start} .. {end}")
        if not isinstance(text, str) or not text.strip():
            raise FilmError(f"bad sidecar captions: {where} needs a non-empty string '{text_key}', got {text!r:.80}")
        out.append((float(start), float(end), text.strip()))
    return out


def load_sidecar(path: str | Path) -> Sidecar | None:
    """The sidecar at `path`, None if there is none; FilmError('bad sidecar captions: ...') if malformed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FilmError(f"bad sidecar captions: {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        got = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise FilmError(f"bad sidecar captions: {path}: expected an object with \"version\": 1, got {got!r}")
    scenes = [SidecarScene(*e) for e in _entries(data, "scenes", "global_caption", path)]
    shots = [SidecarShot(*e) for e in _entries(data, "shots", "caption", path)]
    return Sidecar(scenes, shots)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _best(entries: list, start_s: float, end_s: float):
    """(entry, overlap in s) of the entry overlapping [start_s, end_s) the most (first on ties)."""
    if not end_s > start_s:
        raise ValueError(f"empty time span {start_s} .. {end_s}")
    scored = [(_overlap(e.start_s, e.end_s, start_s, end_s), -i, e) for i, e in enumerate(entries)]
    overlap, _, entry = max(scored, default=(0.0, 0, None), key=lambda s: s[:2])
    return entry, overlap


def sidecar_caption(sidecar: Sidecar, start_s: float, end_s: float) -> str | None:
    """The caption of the sidecar shot overlapping the detected shot most; None below 50 % of it."""
    shot, overlap = _best(sidecar.shots, start_s, end_s)
    return shot.caption if shot is not None and overlap >= MIN_SHOT_OVERLAP * (end_s - start_s) else None


def sidecar_global(sidecar: Sidecar, start_s: float, end_s: float) -> str | None:
    """The global caption of the sidecar scene overlapping [start_s, end_s) most; None if none overlaps."""
    scene, overlap = _best(sidecar.scenes, start_s, end_s)
    return scene.global_caption if scene is not None and overlap > 0 else None


def sidecar_uri(uri: str) -> str:
    """`<film stem>.captions.json` beside the film, for a local path or a URL alike."""
    head, _, name = uri.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}.captions.json" if head else f"{stem}.captions.json"


def find_sidecar(uri: str, cache_dir: Path) -> Sidecar | None:
    """The parsed sidecar of a film, or None; remote sidecars are fetched next to the film's copy."""
    side = sidecar_uri(uri)
    if is_url(side):
        fs, path = fsspec.core.url_to_fs(side)
        if not fs.exists(path):
            return None
        local = local_copy(side, cache_dir)
        try:
            return load_sidecar(local)
        finally:
            local.unlink(missing_ok=True)
    return load_sidecar(Path(side))
