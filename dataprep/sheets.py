"""`lct inspect DIR`: what a curated dataset holds, and a contact sheet per scene.

A contact sheet is one PNG per scene: the scene's global caption on top, then one row per
shot with `keyframes` frames of its mp4 and its caption (the layout is dataprep.media.draw_sheet).
Samples are read by dataprep/dataset.py, the same reader training and eval use.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from dataprep.dataset import CorruptSample, SceneSample, list_shards, raw_samples
from dataprep.media import draw_sheet, even_indices, read_frames
from dataprep.names import safe_filename

THUMB = 128


def mp4_frames(mp4: bytes, k: int) -> list[np.ndarray]:
    """k evenly spaced RGB frames of an in-memory mp4."""
    frames, _ = read_frames(mp4)
    return [frames[i] for i in even_indices(len(frames), k)]


def contact_sheet(sample: dict | SceneSample, k: int = 3) -> Image.Image:
    """One row per shot: k thumbnails + the caption; the global caption on top."""
    scene = sample if isinstance(sample, SceneSample) else SceneSample.parse(sample)
    rows = []
    for row, shot in enumerate(scene.meta["shots"]):
        label = f"shot {row}  [{shot['start_s']:.2f}-{shot['end_s']:.2f}s]  ({shot['caption_source']})"
        lines = [label] + textwrap.wrap(shot["caption"] or "", 55)[:7]
        rows.append((lines, mp4_frames(scene.mp4(row), k)))
    return draw_sheet(f"{scene.key}  |  {scene.meta['global_caption']}", rows, k, thumb=THUMB)


def _skip_damaged(damaged: list[str]):
    def handler(err: Exception) -> bool:  # webdataset's handler protocol: True = go on with the next data
        damaged.append(f"{type(err).__name__}: {err}")
        return True

    return handler


def write_sheets(out_dir: Path, max_sheets: int | None = None, progress=None,
                 damaged: list[str] | None = None) -> list[Path]:
    """Contact sheets into DIR/inspect/<scene_id>.png; returns their paths.

    The file name comes from the shard (the sample key), so it goes through `safe_filename`:
    a crafted shard cannot write outside DIR/inspect. Unreadable shard data (a damaged shard) is
    skipped and described in `damaged`.
    """
    out_dir = Path(out_dir)
    shards = list_shards(out_dir)
    target = out_dir / "inspect"
    target.mkdir(exist_ok=True)
    written = []
    if not shards:
        return written
    damaged = damaged if damaged is not None else []
    for raw in raw_samples(shards, handler=_skip_damaged(damaged)):
        if max_sheets is not None and len(written) >= max_sheets:
            break
        try:
            scene = SceneSample.parse(raw)
        except CorruptSample as err:
            damaged.append(str(err))
            continue
        path = target / f"{safe_filename(scene.key)}.png"
        if path.resolve().parent != target.resolve():  # an invariant of safe_filename
            raise AssertionError(f"contact sheet path {path} escapes {target}")
        contact_sheet(scene).save(path)
        written.append(path)
        if progress:
            progress(len(written))
    return written
