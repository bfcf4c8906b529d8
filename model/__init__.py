"""LCT model: scene-level MMDiT with interleaved 3D RoPE (single-device PyTorch).

Dimension legend used in shape comments throughout `model/`:
    B  scenes in a batch                 S  shots per scene (padded to the batch max)
    G  groups per scene = 1 + S          (group 0 = global prompt, group i = shot i)
    C  latent channels                   F, H, W  latent frames, height, width
    F', H', W'  patch grid = F // p_t, H // p_h, W // p_w
    T  text tokens of one prompt         Dt  text feature dim (384 = all-MiniLM-L6-v2)
    Lt, Lv  text / video tokens of a (padded) scene;  L = Lt + Lv joint sequence
    D  model width                       heads, head_dim = D // heads

Nothing here imports Ray, DeepSpeed or Prefect (tests/model/test_lct.py enforces it).
"""

from .config import PRESETS, LCTConfig
from .export import InferenceBundle, load_bundle, load_export, save_export, write_export
from .latents import LatentCodecConfig, build_codec
from .lct import LCT, Batch, KVCache, Scene, Shot, collate
from .prompt import SHOT_CUT, encode_prompts, encode_scene, scene_prompts, shot_prompt
from .rope import apply_rope, rope_frequencies, scene_position_ids
from .sampling import SamplerConfig, sample, timesteps
from .text import TextEncoder, TextEncoderConfig

__all__ = [
    "LCT", "LCTConfig", "PRESETS", "Batch", "KVCache", "Scene", "Shot", "collate",
    "apply_rope", "rope_frequencies", "scene_position_ids",
    "TextEncoder", "TextEncoderConfig", "LatentCodecConfig", "build_codec",
    "SamplerConfig", "sample", "timesteps", "save_export", "load_export",
    "InferenceBundle", "write_export", "load_bundle",
    "SHOT_CUT", "shot_prompt", "scene_prompts", "encode_prompts", "encode_scene",
]
