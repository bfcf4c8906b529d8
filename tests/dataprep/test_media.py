"""Shared media code: the contact-sheet bytes are pinned, so moving or refactoring the layout
(and the decoder, frame picker and crop it uses) cannot change a single pixel."""

import hashlib
import json

import numpy as np

from dataprep.config import ClipConfig
from dataprep.keyframes import _Mp4Writer
from dataprep.media import frames_sheet
from dataprep.sheets import contact_sheet


def _frames(seed: int, n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """(n, h, w, 3) uint8: smooth gradients that move, so the crop, picks and resize all show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        base = rng.integers(0, 256, 3)
        img = np.stack([(xx * 4 + t * 9 + base[0]) % 256, (yy * 5 + base[1]) % 256,
                        ((xx + yy) * 3 + t * 17 + base[2]) % 256], axis=-1)
        out.append(img.astype(np.uint8))
    return np.stack(out)


def _mp4(frames: np.ndarray) -> bytes:
    writer = _Mp4Writer(ClipConfig(width=frames.shape[2], height=frames.shape[1], fps=8.0))
    for f in frames:
        writer.add(f)
    return writer.close()


def _digest(image) -> str:
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def test_inspect_contact_sheet_pixels_are_pinned():
    shots = [_frames(0, 7), _frames(1, 2), _frames(2, 11)]
    meta = {"global_caption": "Character 1: a red disc. " * 12,
            "shots": [{"start_s": i * 1.5, "end_s": i * 1.5 + 1.0, "caption_source": "sidecar",
                       "caption": f"shot {i} caption, a long one that wraps over lines " * 3} for i in range(3)]}
    sample = {"__key__": "film-00000", "json": json.dumps(meta).encode()}
    sample |= {f"{i:03d}.mp4": _mp4(f) for i, f in enumerate(shots)}
    sheet = contact_sheet(sample)
    assert sheet.size == (3 * 128 + 360, 14 * 3 + 8 + 3 * (128 + 4))
    assert _digest(sheet) == "03fb71d6a103be321a8a87380b15605278a4e7130698a8843bc60bae4fef187f"


def test_training_sheet_pixels_are_pinned():
    rows = [("shot 0: a red disc slides left " * 4, _frames(3, 8, 32, 32)),
            ("shot 1: wide shot", _frames(4, 1, 32, 32)), ("shot 2", _frames(5, 3, 32, 32))]
    sheet = frames_sheet(rows, title="generated | key | a global caption")
    assert sheet.size == (4 * 96 + 360, 14 + 8 + 3 * (96 + 4))
    # shot 1 (1 frame) is one tile and shot 2 (3 frames) three: no repeated frames
    assert _digest(sheet) == "741aae8079d9d47027c8e7543780749bd0bf2432c64decfc8e1cde8128bff540"


def test_sheet_of_short_shots_shows_each_frame_once():
    """A 1-frame shot is one tile, not four copies of it, and a sheet of 1-frame shots is one tile wide."""
    rows = [("shot 0", _frames(6, 1, 16, 16)), ("shot 1", _frames(7, 1, 16, 16))]
    sheet = np.asarray(frames_sheet(rows, title="joint | a scene"))
    assert sheet.shape[1] == 96 + 360
    mixed = [("shot 0", _frames(8, 2, 16, 16)), ("shot 1", _frames(9, 6, 16, 16))]
    wide = np.asarray(frames_sheet(mixed))
    assert wide.shape[1] == 4 * 96 + 360
    top = 8 + 0 * (96 + 4)                      # no title: the first row starts at 8
    tiles = [wide[top:top + 96, j * 96:(j + 1) * 96] for j in range(4)]
    assert not np.array_equal(tiles[0], tiles[1])             # its 2 frames, each once
    assert (tiles[2] == 255).all() and (tiles[3] == 255).all()   # and blank after them
