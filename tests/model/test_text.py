import logging

import pytest
import torch
import torch.nn.functional as F

from model.text import TextEncoder, TextEncoderConfig, minilm_dir


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def minilm(offline) -> TextEncoder:
    return TextEncoder(TextEncoderConfig())


def test_minilm_loads_offline_and_similar_prompts_are_closer(minilm):
    out = minilm(["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax report for the fiscal year"])
    assert minilm.dim == 384
    assert out.tokens.dtype == torch.float32 and out.tokens.shape[0] == 3 and out.tokens.shape[2] == 384
    assert out.mask.dtype == torch.bool and out.pooled.shape == (3, 384)
    p = F.normalize(out.pooled, dim=-1)
    assert p[0] @ p[1] > p[0] @ p[2] + 0.3
    assert p[0] @ p[1] > p[1] @ p[2] + 0.3


def test_mask_matches_token_counts_and_pooled_is_masked_mean(minilm):
    texts = ["short", "a somewhat longer prompt with more words in it", ""]
    out = minilm(texts)
    counts = [len(minilm.encoder.tokenizer(t)["input_ids"]) for t in texts]  # [CLS] ... [SEP]
    assert out.mask.sum(1).tolist() == counts
    assert out.tokens.shape[1] == max(counts)
    assert out.mask[:, 0].all() and not out.mask[0, counts[0]:].any()
    assert (out.tokens[~out.mask] == 0).all()
    mean = torch.stack([out.tokens[i, : counts[i]].mean(0) for i in range(3)])
    torch.testing.assert_close(out.pooled, mean)


def test_truncation_at_max_tokens(offline):
    enc = TextEncoder(TextEncoderConfig(max_tokens=8))
    out = enc(["one two three four five six seven eight nine ten eleven twelve", "hi"])
    assert out.tokens.shape[1] == 8
    assert out.mask.sum(1).tolist() == [8, 3]


def test_deterministic_and_independent_of_batch(offline):
    a = TextEncoder(TextEncoderConfig(cache_size=0))
    alone = a(["a red disc slides left"])
    again = a(["a red disc slides left"])
    torch.testing.assert_close(alone.tokens, again.tokens, rtol=0, atol=0)
    batched = a(["a red disc slides left", "a much longer prompt that forces padding on the first one"])
    n = int(alone.mask.sum())
    torch.testing.assert_close(batched.tokens[0, :n], alone.tokens[0], rtol=0, atol=1e-5)
    assert a.cache_hits == 0


def test_cache_hit_returns_identical_tensors(offline, tmp_path):
    cfg = TextEncoderConfig(cache_dir=str(tmp_path / "cache"))
    enc = TextEncoder(cfg)
    first = enc(["a blue room", "Character 1 enters"])
    assert (enc.cache_hits, enc.cache_misses) == (0, 2)
    second = enc(["Character 1 enters", "a blue room"])
    assert enc.cache_hits == 2
    assert torch.equal(second.pooled, first.pooled.flip(0))
    assert torch.equal(second.tokens[1, : first.mask[0].sum()], first.tokens[0, : first.mask[0].sum()])
    files = sorted((tmp_path / "cache").rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".safetensors", ".safetensors"]
    # a fresh encoder reads the disk cache
    other = TextEncoder(cfg)
    third = other(["a blue room", "Character 1 enters"])
    assert (other.cache_hits, other.cache_misses) == (2, 0)
    assert torch.equal(third.tokens, first.tokens) and torch.equal(third.mask, first.mask)
    assert torch.equal(third.pooled, first.pooled)


def test_lru_evicts_oldest(offline):
    enc = TextEncoder(TextEncoderConfig(cache_size=2))
    enc(["a"]), enc(["b"]), enc(["c"])
    assert list(enc._lru) == ["b", "c"]


def test_frozen_and_features_usable_for_training(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.encoder.model.training
    out = minilm(["a prompt"])
    head = torch.nn.Linear(384, 4)
    head(out.tokens).sum().backward()  # features are normal tensors, not inference tensors
    assert head.weight.grad is not None


def test_bad_inputs_and_missing_paths_teach(minilm, tmp_path):
    with pytest.raises(TypeError, match="list of str"):
        minilm("a bare string")
    with pytest.raises(ValueError, match="empty"):
        minilm([])
    with pytest.raises(ValueError, match="needs path"):
        TextEncoderConfig(kind="t5")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextEncoder(TextEncoderConfig(kind="t5", path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(TextEncoderConfig(kind="t5", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TextEncoder(TextEncoderConfig(kind="open_clip", path=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="kind"):
        TextEncoderConfig(kind="bert")


def test_tiny_t5_from_local_dir(offline, tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)  # any local tokenizer will do
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T5EncoderModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    enc = TextEncoder(TextEncoderConfig(kind="t5", path=str(tmp_path), max_tokens=6))
    out = enc(["a tiny test", "one two three four five six seven"])
    assert enc.dim == 16
    assert out.tokens.shape == (2, 6, 16) and out.pooled.shape == (2, 16)
    assert out.mask.sum(1).tolist() == [5, 6]
    assert torch.isfinite(out.tokens).all()


def test_open_clip_tower_random_then_from_checkpoint(tmp_path, caplog):
    from safetensors.torch import save_file

    with caplog.at_level(logging.WARNING, logger="model.text"):
        rand = TextEncoder(TextEncoderConfig(kind="open_clip", max_tokens=8))
    assert "RANDOMLY INITIALISED" in caplog.text
    out = rand(["a cat", "one two three four five six seven eight nine"])
    assert rand.dim == 512 and out.tokens.shape == (2, 8, 512)
    assert out.mask.sum(1).tolist() == [4, 8]  # <sot> a cat <eot>; truncated keeps <eot>

    # a full CLIP checkpoint (text tensors at the top level, plus vision ones to ignore)
    state = {k: v.contiguous() for k, v in rand.encoder.tower.state_dict().items()}
    save_file(state | {"visual.proj": torch.zeros(2, 2), "logit_scale": torch.ones(())}, tmp_path / "clip.safetensors")
    loaded = TextEncoder(TextEncoderConfig(kind="open_clip", max_tokens=8, path=str(tmp_path / "clip.safetensors")))
    torch.testing.assert_close(loaded(["a cat"]).tokens, out.tokens[:1, :4])
    # a CustomTextCLIP checkpoint (text tower under "text.")
    save_file({f"text.{k}": v for k, v in state.items()}, tmp_path / "custom.safetensors")
    custom = TextEncoder(TextEncoderConfig(kind="open_clip", max_tokens=8, path=str(tmp_path / "custom.safetensors")))
    torch.testing.assert_close(custom(["a cat"]).pooled, out.pooled[:1])
