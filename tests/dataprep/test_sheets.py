"""`lct inspect`'s contact sheets: names taken from a shard never become paths outside DIR/inspect."""

import io
import json
import tarfile

import numpy as np
import pytest

from dataprep.config import ClipConfig
from dataprep.keyframes import _Mp4Writer
from dataprep.names import safe_filename
from dataprep.sheets import write_sheets


def _mp4() -> bytes:
    writer = _Mp4Writer(ClipConfig(width=32, height=32, fps=4.0))
    for i in range(4):
        writer.add(np.full((32, 32, 3), 60 * i, np.uint8))
    return writer.close()


def _crafted_shard(path, keys: list[str]) -> None:
    """A WebDataset shard whose sample keys are `keys` (json + one shot each), as a hostile tool would write it."""
    mp4 = _mp4()
    with tarfile.open(path, "w") as tar:
        for key in keys:
            meta = {"global_caption": "crafted", "shots": [{"start_s": 0.0, "end_s": 1.0, "caption": "x",
                                                              "caption_source": "none"}]}
            for ext, data in (("json", json.dumps(meta).encode()), ("000.mp4", mp4)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_crafted_shard_cannot_write_outside_the_dataset(tmp_path):
    outside = tmp_path / "outside"
    dataset = tmp_path / "a" / "b" / "ds"
    (dataset / "shards").mkdir(parents=True)
    keys = ["../../escaped", "../../../outside/dotdot", str(outside / "absolute"), "ok-00000"]
    _crafted_shard(dataset / "shards" / "scenes-000000.tar", keys)
    outside.mkdir()

    written = write_sheets(dataset)

    assert len(written) == len(keys)
    inspect = (dataset / "inspect").resolve()
    assert all(p.resolve().parent == inspect for p in written), written
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in inspect.glob("*.png"))
    assert not list(outside.iterdir()) and not (tmp_path / "a" / "escaped.png").exists()
    assert (inspect / "ok-00000.png").is_file()  # a key lct writes keeps its name


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "..", ".hidden", "a/b", "x\x00y", "é" * 300, ""])
def test_safe_filename_is_one_plain_name(key):
    name = safe_filename(key)
    assert name and "/" not in name and "\x00" not in name and not name.startswith(".") and ".." not in name
    assert len(name) <= 100
    assert safe_filename(key) == name  # deterministic


def test_safe_filename_keeps_lct_keys_and_keeps_distinct_keys_distinct():
    assert safe_filename("0123456789abcdef-00003") == "0123456789abcdef-00003"
    assert safe_filename("../x") != safe_filename("__x") != safe_filename("/x")


def test_local_copies_of_urls_use_the_same_rule(tmp_path):
    """Issue 15.3: the other name taken from data that becomes a path, a remote film's URL, goes through
    safe_filename too: it stays inside the cache folder and keeps its extension."""
    import fsspec

    from dataprep.sources import local_copy

    fs = fsspec.filesystem("memory")
    for path in ("/b/../../etc/x.mp4", "/b/a\nb/..mp4", "/b/plain.MOV"):
        fs.pipe(path, b"data")
    cache = tmp_path / "cache"
    copies = [local_copy(f"memory://{p}", cache) for p in ("/b/../../etc/x.mp4", "/b/a\nb/..mp4", "/b/plain.MOV")]
    assert all(c.parent == cache and c.read_bytes() == b"data" for c in copies), copies
    assert [c.suffix for c in copies] == [".mp4", ".mp4", ".MOV"] and len(set(copies)) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(c.name for c in copies)
