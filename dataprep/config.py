"""Typed configuration of `lct curate` (and `lct synth`).

One pydantic tree; each stage takes only its own sub-config. Loadable from YAML
(`CurateConfig.from_yaml`), saved whole into `DIR/dataset.json` with every run.
Unknown keys are an error (a typo in a YAML file must not be silently ignored).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dataprep.configfile import (  # noqa: F401 (the rules of config files, re-exported for callers of dataprep.config)
    _section_model, explain, key_hints, load_yaml, read_yaml, renamed, set_dotted,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeConfig(_Strict):
    """Reading container metadata with PyAV."""

    min_duration_s: float = Field(0.2, gt=0, description="Films shorter than this are failed as too short.")
    hash_bytes: int = Field(
        4 << 20, ge=4096, description="Bytes hashed from the head and the tail of a file to derive its film_id."
    )


class ShotsConfig(_Strict):
    """Shot-boundary detection with PySceneDetect."""

    detector: Literal["content", "adaptive"] = Field("content", description="PySceneDetect detector.")
    threshold: float = Field(
        27.0, gt=0, description="ContentDetector threshold (for `adaptive`: adaptive_threshold is `threshold / 9`)."
    )
    min_shot_frames: int = Field(8, ge=1, description="Minimum shot length in frames given to the detector.")
    downscale_width: int = Field(
        256, ge=16, description="Frames are decoded scaled to about this width before detection."
    )
    decode_threads: int = Field(0, ge=0, description="PyAV decoding threads (0 = let FFmpeg choose).")
    flash_filter: bool = Field(
        True, description="Drop a cut when the frame before it reappears within `flash_frames` after it (a flash)."
    )
    flash_frames: int = Field(4, ge=1, description="How many frames after a cut a flash may last.")
    flash_return: float = Field(
        0.2,
        ge=0,
        description="A flash's later frame differs from the frame before it by under this fraction of the cut's jump.",
    )
    gradual: bool = Field(True, description="Add cuts at the midpoints of dissolves and fades through black.")
    gradual_frames: int = Field(12, ge=2, description="Window (frames) over which a dissolve is tested.")
    dissolve_diff: float = Field(
        20.0, ge=0, description="A dissolve window's end thumbnails differ by more than this mean |difference| (0-255)."
    )
    dissolve_residual: float = Field(
        0.15, ge=0, description="A dissolve's inner frames are blends of its ends within this fraction of their change."
    )
    dissolve_prominence: float = Field(
        1.5,
        ge=1,
        description="A dissolve window's end difference is this many times that of the windows before and after it.",
    )
    fade_luma: float = Field(
        12.0, ge=0, le=255, description="Frames darker than this mean grey level (0-255) are black in a fade."
    )


class FilterConfig(_Strict):
    """Which shots are kept; every drop is recorded with a reason."""

    min_shot_s: float = Field(0.5, ge=0, description="Shots shorter than this are dropped (`too_short`).")
    max_shot_s: float = Field(
        10.0, gt=0, description="Shots longer than this are split into equal pieces no longer than it."
    )
    black_luma: float = Field(
        16.0, ge=0, le=255, description="Shots whose mean luma (0-255) is below this are dropped (`black`)."
    )
    static_diff: float = Field(
        0.5,
        ge=0,
        description="Shots whose mean absolute frame-to-frame difference (0-255) is below this are dropped (`static`).",
    )

    @model_validator(mode="after")
    def _check(self) -> "FilterConfig":
        if self.max_shot_s <= self.min_shot_s:
            raise ValueError(f"max_shot_s ({self.max_shot_s}) must be greater than min_shot_s ({self.min_shot_s})")
        return self


class ClipConfig(_Strict):
    """Keyframes and re-encoded shot clips at the curated size."""

    width: int = Field(256, ge=16, description="Curated width (pixels, even).")
    height: int = Field(256, ge=16, description="Curated height (pixels, even).")
    fps: float = Field(8.0, gt=0, description="Curated frame rate of the re-encoded shot mp4s.")
    keyframes: int = Field(3, ge=1, le=16, description="Keyframes per shot (evenly spaced).")
    crf: int = Field(23, ge=0, le=51, description="x264 CRF of the re-encoded shots.")

    @model_validator(mode="after")
    def _check(self) -> "ClipConfig":
        if self.width % 2 or self.height % 2:
            raise ValueError(f"curated size must be even for H.264, got {self.width}x{self.height}")
        return self


class EmbedConfig(_Strict):
    """open_clip image embeddings per shot (mean of keyframes, L2-normalised)."""

    model: str = Field("ViT-B-32", description="open_clip architecture name.")
    pretrained: str | None = Field(
        None,
        description="open_clip pretrained tag or a local checkpoint path. None = random init (warned, recorded).",
    )
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    device: str = Field("cpu", description="torch device of the embedding actors.")


class VLMConfig(_Strict):
    """An OpenAI-compatible chat-completions endpoint that captions scenes."""

    url: str = Field(description="Base URL, e.g. http://vllm:8000/v1 (POSTs to {url}/chat/completions).")
    model: str = Field(description="Model name sent in the request.")
    api_key_env: str | None = Field(
        "LCT_VLM_API_KEY", description="Environment variable that holds the API key (never logged)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    retries: int = Field(3, ge=0, description="Retries after a failed request (exponential backoff).")
    backoff_s: float = Field(1.0, ge=0, description="First backoff; doubles on each retry.")
    max_images_per_shot: int = Field(1, ge=1, description="Keyframes of each shot sent to the VLM.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature sent in the request (0 = most deterministic).")
    max_tokens: int = Field(1024, ge=16, description="Max tokens of the answer (the JSON with all captions of a scene).")


class CaptionConfig(_Strict):
    """Captions, in priority: sidecar file, VLM endpoint, on-box CoCa."""

    use_sidecar: bool = Field(True, description="Use `<film>.captions.json` beside a film when present.")
    vlm: VLMConfig | None = Field(None, description="VLM endpoint; None = no VLM.")
    coca: bool = Field(
        True,
        description="Caption shots without a sidecar/VLM caption with open_clip CoCa, when its weights are configured "
        "(coca_pretrained); without weights nothing is captioned by CoCa (caption_source `none`).",
    )
    coca_model: str = Field("coca_ViT-B-32", description="open_clip CoCa architecture.")
    coca_pretrained: str | None = Field(
        None, description="CoCa pretrained tag or local checkpoint path. None = no CoCa captions (unless coca_random)."
    )
    coca_random: bool = Field(
        False,
        description="Caption with a RANDOM-INIT CoCa when coca_pretrained is None. Its captions are gibberish: "
        "only for checking the pipeline, never for a dataset you train on.",
    )
    coca_seq_len: int = Field(12, ge=2, description="Max generated tokens per CoCa caption.")
    batch_size: int = Field(8, ge=1, description="Keyframes per CoCa batch.")
    coca_top_k: int = Field(
        1, ge=1, description="CoCa top-k sampling (1 = greedy); sampling is seeded per batch, so captions are reproducible."
    )
    device: str = Field("cpu", description="torch device of the CoCa captioning actors.")


class SceneConfig(_Strict):
    """Grouping adjacent shots into scenes."""

    similarity: Literal["auto", "histogram", "clip"] = Field(
        "auto", description="auto = CLIP cosine when pretrained CLIP weights are loaded, else colour histograms."
    )
    threshold: float | None = Field(
        None, description="Similarity below which a new scene starts (None = the method's default)."
    )
    min_shots: int = Field(1, ge=1, description="Scenes with fewer shots are not written (drop reason `scene_too_small`).")
    chunk_shots: int = Field(
        9, ge=1, description="Scenes longer than this many shots are split into balanced chunks (was `max_shots`)."
    )
    max_gap_s: float = Field(
        2.0, ge=0, description="A gap between kept shots longer than this (dropped footage) starts a new scene."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        return renamed(data, "scenes", {"max_shots": "chunk_shots"})


class ShardConfig(_Strict):
    """WebDataset shards of scenes."""

    max_samples: int = Field(64, ge=1, description="Scenes per shard at most.")
    max_bytes: int = Field(256 << 20, ge=1 << 16, description="Bytes per shard at most (a single larger scene gets its own shard).")


class RayConfig(_Strict):
    """Where and how wide the curation runs. Resources per stage are set here, in one place."""

    address: str | None = Field(None, description="Ray cluster address; None = start a local Ray.")
    dashboard_host: str = Field("127.0.0.1", description="Dashboard host of a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None = all).")
    film_cpus: float = Field(1.0, gt=0, description="CPUs per film task (probe, detect, keyframes, re-encode).")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Films between submission and the writer at most (None = 8 x cluster CPUs, at most 1024). "
        "Bounds driver memory; films are written in input order, so a slow film holds back this many.",
    )
    embed_actors: int = Field(1, ge=1, description="open_clip embedding actors.")
    embed_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved per embedding actor (0 = share cores with film tasks; set on clusters)."
    )
    embed_gpus: float = Field(0.0, ge=0, description="GPUs per embedding actor.")
    caption_actors: int = Field(1, ge=1, description="CoCa / VLM captioning actors.")
    caption_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved per captioning actor (0 = share cores with film tasks)."
    )
    caption_gpus: float = Field(0.0, ge=0, description="GPUs per captioning actor.")
    task_retries: int = Field(2, ge=0, description="Retries of a film task whose worker died.")


class CurateConfig(_Strict):
    """Everything `lct curate` does. Save/load with YAML."""

    probe: ProbeConfig = ProbeConfig()
    shots: ShotsConfig = ShotsConfig()
    filters: FilterConfig = FilterConfig()
    clips: ClipConfig = ClipConfig()
    embed: EmbedConfig = EmbedConfig()
    caption: CaptionConfig = CaptionConfig()
    scenes: SceneConfig = SceneConfig()
    shards: ShardConfig = ShardConfig()
    ray: RayConfig = RayConfig()
    max_failure_rate: float = Field(
        0.25, ge=0, le=1, description="`lct curate` fails when more than this share of films failed."
    )
    max_caption_failure_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="`lct curate` fails when more than this share of the scenes it wrote have a shot whose "
        "configured captioner (VLM endpoint, CoCa) failed to caption it. Scenes left uncaptioned because no "
        "captioner is configured are counted apart (`no_captioner`), not failed.",
    )
    extensions: tuple[str, ...] = Field(
        (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"), description="Extensions picked up from folders."
    )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CurateConfig":
        return load_yaml(cls, path)

    def with_absolute_paths(self) -> "CurateConfig":
        """The weights given as local files (embed.pretrained, caption.coca_pretrained: a tag or a path) made
        absolute, relative to where the command runs: the Ray actors that load them run elsewhere."""
        def local(value: str | None) -> str | None:
            path = os.path.expanduser(value) if value else None
            return os.path.abspath(path) if path and os.path.exists(path) else value

        return self.model_copy(update={
            "embed": self.embed.model_copy(update={"pretrained": local(self.embed.pretrained)}),
            "caption": self.caption.model_copy(update={"coca_pretrained": local(self.caption.coca_pretrained)}),
        })
