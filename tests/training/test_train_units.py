"""Training pieces without a cluster: config + DeepSpeed JSON, the scene stream and loader, the objective."""

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from model import PRESETS, TextEncoder, build_codec
from training.config import DataSection, RecipeSection, TrainConfig, deepspeed_config, dump_yaml
from dataprep.dataset import CorruptSample, DatasetError, check_layout, heldout_keys, shard_paths
from training.data import SceneLoader, SceneStream, prepare
from training.objective import add_noise, bucket_losses, drop_prompts, flow_loss, sample_timesteps

DATA = {"frames": 4, "size": [16, 16]}


def small(**sections) -> TrainConfig:
    base = {"data": DATA, "model": {"preset": "lct-debug"}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainConfig.model_validate(base)


# -- config ----------------------------------------------------------------------------------
def test_deepspeed_json_derives_batch_sizes_and_zero_options():
    cfg = small(optim={"micro_batch": 2, "grad_accum": 3}, engine={"zero_stage": 3, "offload_params": True})
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_batch_size"] == 2 * 3 * 4
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["bf16"]["enabled"] is False
    gpu = deepspeed_config(small(engine={"gpus_per_worker": 1}), world_size=8)
    assert gpu["bf16"]["enabled"] is True and gpu["optimizer"]["params"]["torch_adam"] is False


def test_config_yaml_round_trip():
    cfg = small(recipe={"timesteps": "sync"}, schedule={"steps": 7})
    assert TrainConfig.model_validate(yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("sections, message", [
    ({"engine": {"zero_stage": 3}, "optim": {"ema": 0.999}}, "ema needs the full weights"),
    ({"engine": {"offload_params": True}}, "offload_params needs zero_stage 3"),
    ({"engine": {"precision": "bf16"}}, "bf16 is for CUDA"),
    ({"data": {"window_shots": 12}}, "exceeds the model's context_shots=9"),
    ({"data": {"size": [15, 16]}}, "multiples of the patch"),
    ({"model": {"preset": "lct-huge"}}, "is not a preset"),
    ({"model": {"overrides": {"depht": 3}}}, "unknown LCTConfig fields ['depht']"),
    ({"optim": {"lr": 1e-3, "warmup": 3}}, "Extra inputs are not permitted"),
    ({"data": {"codec": "vae"}}, "data.codec=vae needs data.codec_path"),
    ({"data": {"text_kind": "t5"}}, "data.text_kind=t5 needs data.text_path"),
    ({"engine": {"sequence_parallel": 3, "workers": 3}}, "does not divide the model's 4 attention heads; Ulysses gives "
                                                         "each rank heads / P of them: use one of [1, 2, 4]"),
    ({"engine": {"sequence_parallel": 2, "workers": 3}}, "does not divide the 3 training workers"),
])
def test_bad_configs_are_refused_with_the_reason(sections, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        small(**sections)


# -- data ------------------------------------------------------------------------------------
def keys(stream: SceneStream, n: int, epoch: int = 0, index: int = 0) -> list[tuple[int, int, str]]:
    out = []
    for e, i, sample in stream.from_position(epoch, index):
        out.append((e, i, sample["__key__"]))
        if len(out) == n:
            return out
    return out


def test_stream_is_deterministic_endless_and_resumes_mid_epoch(curated):
    a, b = SceneStream(curated, seed=3, shuffle_buffer=4), SceneStream(curated, seed=3, shuffle_buffer=4)
    first = keys(a, 30)
    assert first == keys(b, 30)
    per_epoch = sum(1 for e, _, _ in first if e == 0)
    assert per_epoch == 11 and {e for e, _, _ in first} == {0, 1, 2}       # endless: epochs follow
    assert [k for e, _, k in first if e == 0] != [k for e, _, k in first if e == 1]   # reshuffled per epoch
    assert keys(b, 10, epoch=1, index=4) == [x for x in first if (x[0], x[1]) >= (1, 4)][:10]
    assert [k for _, _, k in keys(SceneStream(curated, seed=4, shuffle_buffer=4), 11)] != [k for _, _, k in first[:11]]


def test_ranks_read_disjoint_shards_and_holdout_is_excluded(curated):
    held = heldout_keys(curated, 2)
    assert len(held) == 2 and held == heldout_keys(curated, 2)
    seen = [{k for e, _, k in keys(SceneStream(curated, r, 2, seed=0, holdout=2), 40) if e == 0} for r in (0, 1)]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 11 - 2 and not (seen[0] | seen[1]) & set(held)


def test_prepare_windows_shots_and_makes_image_shots(curated):
    raw = next(s for _, _, s in SceneStream(curated, shuffle_buffer=1).from_position() if len(json.loads(s["json"])["shots"]) >= 3)
    data = DataSection(**DATA)
    p = prepare(raw, data, RecipeSection(single_shot_prob=0, image_prob=0, text_dropout=0, continuation_prob=0), window_shots=2, seed=0)
    assert len(p.videos) == 2 and all(v.shape == (4, 16, 16, 3) for v in p.videos)
    again = prepare(raw, data, RecipeSection(single_shot_prob=0, image_prob=0, text_dropout=0, continuation_prob=0), window_shots=2, seed=0)
    assert all((a == b).all() for a, b in zip(p.videos, again.videos)) and p.captions == again.captions
    img = prepare(raw, data, RecipeSection(single_shot_prob=0, image_prob=1, text_dropout=1, continuation_prob=0), window_shots=9, seed=0)
    assert all(v.shape[0] == 1 for v in img.videos)
    one = prepare(raw, data, RecipeSection(single_shot_prob=1, image_prob=0, text_dropout=0, continuation_prob=0), window_shots=9, seed=0)
    assert len(one.videos) == 1


def test_continuation_samples_are_consecutive_segments_of_one_shot_without_the_cut_marker(curated):
    """What `--mode extend` continues: k segments of one shot, back to back, each prompted as written."""
    from dataprep.dataset import SceneSample
    from dataprep.media import cover_crop, read_frames
    from model import encode_prompts
    from training.data import encode

    data = DataSection(**{**DATA, "frames": 2, "fps": 4.0})            # 0.5 s segments: 64x64 clips hold several
    recipe = RecipeSection(continuation_prob=1, single_shot_prob=0, image_prob=0, text_dropout=0)
    seen = 0
    for _, _, raw in SceneStream(curated, shuffle_buffer=1).from_position():
        p = prepare(raw, data, recipe, window_shots=3, seed=0)
        if not p.continuation:
            continue
        scene = SceneSample.parse(raw)
        shot = next(i for i, s in enumerate(scene.shots) if (s.get("caption") or "") == p.captions[0])
        assert 2 <= len(p.videos) <= 3 and len(set(p.captions)) == 1
        src, src_fps = read_frames(scene.mp4(shot))
        crops = [cover_crop(f, tuple(data.size)) for f in src]
        index = [next(j for j, c in enumerate(crops) if (c == frame).all()) for frame in np.concatenate(p.videos)]
        steps = np.diff(index)                                           # source frames between target frames
        assert (steps > 0).all() and abs(steps - src_fps / data.fps).max() <= 1, (index, src_fps)
        text = TextEncoder(data.text_config())
        rows = encode(p, text, build_codec(data.codec_config())).scene
        plain = encode_prompts(text, [p.global_caption, p.captions[0].strip()])
        assert torch.equal(rows.shots[0].text, plain[1].cpu()) and "[SHOT CUT]" not in p.captions[0]
        seen += 1
        if seen == 2:
            break
    assert seen == 2


def test_cached_continuation_segments_are_the_same_every_epoch(curated):
    """With data.cache a continuation sample's segments (the cache keys) repeat across epochs; without, they move."""
    raw = next(s for _, _, s in SceneStream(curated, shuffle_buffer=1).from_position()
               if max(sh["end_s"] - sh["start_s"] for sh in json.loads(s["json"])["shots"]) >= 2.0)
    recipe = RecipeSection(continuation_prob=1, single_shot_prob=0, image_prob=0, text_dropout=0)

    def clips(cache: bool) -> list:
        data = DataSection(**{**DATA, "frames": 2, "fps": 4.0, "cache": cache})
        out = [prepare({**raw, "__epoch__": e}, data, recipe, window_shots=2, seed=0) for e in range(6)]
        assert all(p.continuation for p in out)
        return [json.dumps(p.clips, sort_keys=True) for p in out]

    assert len(set(clips(cache=True))) <= len(json.loads(raw["json"])["shots"])   # one window per shot
    assert len(set(clips(cache=False))) > len(set(clips(cache=True)))


def _corrupt_copy(curated, tmp_path):
    """The dataset with one broken shot mp4 and one sample without its json, in a fourth shard."""
    root = tmp_path / "ds"
    shutil.copytree(curated, root)
    src = shard_paths(root)[0]
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = root / "shards" / "scenes-999999.tar"
    with tarfile.open(out, "w") as tar:
        for m, data in members:
            if m.name.endswith("001.mp4"):
                data = b"\x00garbage" * 100
            if m.name.endswith(".json") and "00001" in m.name:
                continue
            m.name = "zz" + m.name
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return root, sum(1 for m, _ in members if m.name.endswith(".json"))


def test_loader_skips_and_counts_corrupt_samples(curated, tmp_path):
    root, n_bad = _corrupt_copy(curated, tmp_path)
    data = DataSection(**DATA, dataset=str(root), prefetch=2)
    text, codec = TextEncoder(data.text_config()), build_codec(data.codec_config())
    plain = RecipeSection(single_shot_prob=0, image_prob=0, text_dropout=0, continuation_prob=0)
    loader = SceneLoader(SceneStream(root, shuffle_buffer=1), data, plain, 9, 0, text, codec)
    try:
        got = [loader.next() for _ in range(11)]
    finally:
        loader.close()
    assert loader.skipped >= n_bad                      # every sample of the broken shard, counted
    assert not any(s.key.startswith("zz") and "00001" in s.key for s in got)
    assert all(sh.latent.shape == (3, 4, 16, 16) for s in got for sh in s.scene.shots)


def test_a_run_saved_with_the_old_max_shots_key_resumes(curated, tmp_path):
    from training.launch import check, prepare_run

    cfg, run = small(data={"dataset": str(curated)}), tmp_path / "run"
    prepare_run(cfg, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"] = {("max_shots" if k == "window_shots" else k): v for k, v in saved["data"].items()}
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))   # as lct wrote it before
    with pytest.warns(FutureWarning, match=r"data\.max_shots is deprecated"):
        check(cfg, run)                                  # the same config under the new name: resumable


def test_layout_checks_teach(tmp_path, curated):
    with pytest.raises(DatasetError, match="does not exist"):
        shard_paths(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no shards"):
        shard_paths(tmp_path)
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "x.tar", "w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises((DatasetError, CorruptSample), match="LCT scene sample|no readable json"):
        check_layout(tmp_path)
    assert "shots" in check_layout(curated)


# -- objective -------------------------------------------------------------------------------
def test_async_timesteps_differ_per_shot_and_sync_share_one():
    mask = torch.ones(4, 5, dtype=torch.bool)
    t = sample_timesteps(mask, RecipeSection(), torch.Generator().manual_seed(0))
    assert t.shape == (4, 5) and ((t > 0) & (t < 1)).all() and (t.std(1) > 0).all()
    s = sample_timesteps(mask, RecipeSection(timesteps="sync"), torch.Generator().manual_seed(0))
    assert (s == s[:, :1]).all()
    many = sample_timesteps(torch.ones(2000, 1, dtype=torch.bool), RecipeSection(logit_mean=1.0), torch.Generator().manual_seed(0))
    assert abs(torch.logit(many).mean().item() - 1.0) < 0.1              # logit-normal(m=1, s=1)


def test_flow_loss_is_mean_over_real_shots():
    gen = torch.Generator().manual_seed(0)
    z0 = [[torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)], [torch.randn(3, 2, 4, 4, generator=gen)]]
    mask = torch.tensor([[True, True], [True, False]])
    t = torch.tensor([[0.2, 0.9], [0.5, 0.5]])
    noisy, targets = add_noise(z0, t, gen)
    eps = targets[0][0] + z0[0][0]
    assert torch.allclose(noisy[0][0], 0.8 * z0[0][0] + 0.2 * eps, atol=1e-6)
    perfect, per_shot = flow_loss(targets, targets, mask)
    assert perfect.item() == 0
    zero_v = [[torch.zeros_like(y) for y in row] for row in targets]
    loss, per_shot = flow_loss(zero_v, targets, mask)
    expected = [(targets[0][0] ** 2).mean(), (targets[0][1] ** 2).mean(), (targets[1][0] ** 2).mean()]
    assert torch.allclose(loss, torch.stack(expected).mean()) and per_shot[1, 1] == 0
    buckets = bucket_losses(per_shot, t, mask)
    assert sum(c for _, c in buckets.values()) == 3 and buckets["t0.75-1.00"][1] == 1


def test_token_flow_loss_shares_over_token_shards_sum_to_flow_loss():
    """The loss sequence parallelism uses: packed tokens, split in P chunks, shares add up to flow_loss."""
    from model import PRESETS, Scene, Shot, collate
    from model.lct import unpack
    from training.objective import pack_targets, token_flow_loss
    from training.sequence_parallel import shard_tokens

    cfg, gen = PRESETS["lct-debug"], torch.Generator().manual_seed(0)
    shapes = [[(3, 1, 4, 6), (3, 2, 2, 2)], [(3, 1, 2, 2)]]
    targets = [[torch.randn(s, generator=gen) for s in row] for row in shapes]
    v = [[torch.randn(s, generator=gen) for s in row] for row in shapes]
    batch = collate([Scene(torch.zeros(1, cfg.text_dim), [Shot(torch.zeros(1, cfg.text_dim), z) for z in row]) for row in v], cfg)
    mask = batch.shot_mask
    loss, per_shot = flow_loss(unpack(batch.vid, batch, cfg.patch), targets, mask)
    numel = torch.tensor([[float(torch.Size(s).numel()) for s in row] + [0.0] * (2 - len(row)) for row in shapes])
    target = pack_targets(targets, batch.vid.shape[1], cfg.patch)                 # (B, Lv, patch_dim)
    whole, whole_per_shot = token_flow_loss(batch.vid, target, batch.vid_group, mask, numel)
    assert torch.allclose(whole, loss, atol=1e-6) and torch.allclose(whole_per_shot, per_shot, atol=1e-6)
    P = 3                                                                         # Lv = 8 tokens: chunks of 3, 3, 2
    parts = [token_flow_loss(shard_tokens(batch.vid, r, P), shard_tokens(target, r, P),
                             shard_tokens(batch.vid_group, r, P, -1), mask, numel) for r in range(P)]
    assert all(p.item() > 0 for p, _ in parts)
    assert torch.allclose(sum(p for p, _ in parts), loss, atol=1e-6)
    assert torch.allclose(sum(s for _, s in parts), per_shot, atol=1e-6)


def test_prompt_dropout_is_rank_independent_and_has_its_rate():
    drops = [drop_prompts(0, step, 0, 0.1) for step in range(4000)]
    assert abs(sum(drops) / len(drops) - 0.1) < 0.02
    assert drops == [drop_prompts(0, step, 0, 0.1) for step in range(4000)]      # no rank, no state
    assert not any(drop_prompts(0, s, 0, 0.0) for s in range(100)) and all(drop_prompts(0, s, 0, 1.0) for s in range(100))


def test_tiny_preset_fits_the_test_data_config():
    assert PRESETS["lct-debug"].patch == (1, 2, 2)
