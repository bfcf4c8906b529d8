"""The encoding cache (`data.cache`): each shot clip's latents and each prompt's features, once.

    cache = EncodingCache(RUN / "cache", data.codec_config(), data.text_config())
    text = TextEncoder(cache.text_config)                 # prompts: TextEncoder's own disk cache
    z = cache.latent(key, clip, lambda: codec.encode(video))   # (C, F', H', W'), encoded on a miss only

Layout (self-describing; safe to delete, rebuilt on the next epoch):
    CACHE/latents/<codec id>/identity.json            what the id stands for
    CACHE/latents/<codec id>/<scene key>/<clip hash>.safetensors
    CACHE/text/<text id>/identity.json
    CACHE/text/<text id>/<xx>/<prompt hash>.safetensors   (model/text.py writes these)

An id is a hash of the encoder's config and of its weights folder as found on disk: every
config/tokenizer file's content, and the name, size and mtime of every weight file. A changed
VAE or text encoder (other weights, another config) gets a new id, so a stale entry is never
read; an entry is keyed inside by the scene key and the clip: shot index, the frame indices
taken, the shot's frame count and fps, and the crop size. Entries are written to a temp name
and renamed (ranks that share scenes may write the same entry); an unreadable entry is
re-encoded and rewritten, counted in `rebuilt`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

from torch import Tensor

from model.latents import LatentCodecConfig
from model.text import TextEncoderConfig, minilm_dir

log = logging.getLogger(__name__)

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def folder_fingerprint(path: str | Path) -> dict:
    """What identifies the weights at `path` (a dir or a file): text files by content, weights by size + mtime."""
    path = Path(path).expanduser().resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = {}
    for f in files:
        name = str(f.relative_to(path)) if path.is_dir() else f.name
        stat = f.stat()
        if f.suffix in WEIGHTS:
            out[name] = [stat.st_size, stat.st_mtime_ns]
        else:                                       # configs, tokenizer vocabularies: by content
            out[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"path": str(path), "files": out}


def _text_folders(cfg: TextEncoderConfig) -> list[Path]:
    if cfg.kind == "minilm":
        return [Path(cfg.path) if cfg.path else minilm_dir()]
    if cfg.path is None:                            # a randomly initialised open_clip tower: no weights
        return []
    folders = [Path(cfg.path)]
    sibling = Path(cfg.path).expanduser().parent / "tokenizer"   # a diffusers folder's tokenizer/
    if cfg.kind == "t5" and sibling.is_dir():
        folders.append(sibling)
    return folders


def _identity_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _write_identity(directory: Path, identity: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "identity.json"
    if not target.is_file():
        tmp = target.with_name(f"identity.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, target)


class EncodingCache:
    """Latents per (scene key, clip) and the text encoder's cache dir, under one root; see the module doc."""

    def __init__(self, root: str | Path, codec: LatentCodecConfig, text: TextEncoderConfig):
        root = Path(root)
        codec_identity = {"codec": dataclasses.asdict(codec) | {"path": None},
                          "weights": folder_fingerprint(codec.path) if codec.path else None}
        text_identity = {"text": dataclasses.asdict(text) | {"path": None, "cache_size": None, "cache_dir": None},
                         "weights": [folder_fingerprint(p) for p in _text_folders(text)]}
        self.latent_dir = root / "latents" / _identity_id(codec_identity)
        text_dir = root / "text" / _identity_id(text_identity)
        _write_identity(self.latent_dir, codec_identity)
        _write_identity(text_dir, text_identity)
        self.text_config = dataclasses.replace(text, cache_dir=str(text_dir))
        self.hits = self.misses = self.rebuilt = 0

    def _file(self, key: str, clip: dict) -> Path:
        digest = hashlib.sha256(json.dumps(clip, sort_keys=True).encode()).hexdigest()[:24]
        return self.latent_dir / key / f"{digest}.safetensors"

    def latent(self, key: str, clip: dict, encode: Callable[[], Tensor]) -> Tensor:
        """The cached latent of `clip` of scene `key`, or encode() it once and store it."""
        from safetensors.torch import load_file, save_file

        f = self._file(key, clip)
        if f.is_file():
            try:
                z = load_file(f)["latent"]
                self.hits += 1
                return z
            except Exception as err:                # a damaged entry: re-encode it (counted)
                log.warning("re-encoding damaged cache entry %s: %r", f, err)
                self.rebuilt += 1
        self.misses += 1
        z = encode().detach().float().cpu().contiguous()
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.tmp{os.getpid()}")
        save_file({"latent": z}, str(tmp), metadata={"key": key, "clip": json.dumps(clip, sort_keys=True)})
        os.replace(tmp, f)
        return z

