"""Write a randomly initialised tiny Wan 2.1 text-to-video folder in the diffusers layout.

    python examples/make_tiny_wan.py OUT [--seed 0] [--no-text-encoder]

OUT/
  model_index.json                 WanPipeline's component list
  transformer/                     WanTransformer3DModel (2 layers, width 24, 4 latent channels)
  vae/                             AutoencoderKLWan (z_dim 4, compresses t by 2, h and w by 4)
  text_encoder/ + tokenizer/       UMT5EncoderModel (d_model 16) + a tokenizer that loads offline
  scheduler/                       UniPCMultistepScheduler with Wan's flow_shift

Everything is random (nothing is downloaded): the folder exercises lct's Wan path end to end
(`lct train --pretrained OUT`) in seconds on a CPU. The real umT5 tokenizer (a 256K-token
SentencePiece model) is not available offline, so the tokenizer is the WordPiece tokenizer of
the packaged all-MiniLM-L6-v2 and the umT5 vocabulary is sized to it; the text encoder's
weights are still a real `UMT5EncoderModel`. --no-text-encoder leaves text_encoder/ and
tokenizer/ out (lct then uses MiniLM + a trained projection to the transformer's text width).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TRANSFORMER = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)
VAE = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0],
    scale_factor_temporal=2, scale_factor_spatial=4,
)
UMT5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
FLOW_SHIFT = 3.0


def make_tiny_wan(out: str | Path, seed: int = 0, text_encoder: bool = True) -> Path:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    WanTransformer3DModel(**TRANSFORMER).save_pretrained(out / "transformer")
    AutoencoderKLWan(**VAE).save_pretrained(out / "vae")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT,
                            num_train_timesteps=1000).save_pretrained(out / "scheduler")
    components = {"transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
                  "scheduler": ["diffusers", "UniPCMultistepScheduler"]}
    if text_encoder:
        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        from model.text import minilm_dir

        tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
        tokenizer.save_pretrained(out / "tokenizer")
        config = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                            **UMT5)
        UMT5EncoderModel(config).save_pretrained(out / "text_encoder", safe_serialization=True)
        components |= {"text_encoder": ["transformers", "UMT5EncoderModel"],
                       "tokenizer": ["transformers", type(tokenizer).__name__]}
    index = {"_class_name": "WanPipeline", "_diffusers_version": "0.39.0", **components}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Folder to write (created).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-text-encoder", action="store_true", help="Leave out text_encoder/ and tokenizer/.")
    args = parser.parse_args()
    print(make_tiny_wan(args.out, args.seed, text_encoder=not args.no_text_encoder))


if __name__ == "__main__":
    main()
