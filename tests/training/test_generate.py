"""`lct generate`: scene files, the four modes, the history pool, outputs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dataprep.media import decode_clip, encode_mp4
from model import LCT, PRESETS, LatentCodecConfig, SamplerConfig, Scene, Shot, TextEncoderConfig, build_codec, sample
from model.export import load_bundle, write_export
from model.sampling import sample_shots
from pipelines.cli import app
from training.generate import DEFAULT_CFG, WAN_CFG, SceneError, generate, load_scene, plan_scene, write_outputs
from training.history import prompt_features, recent_history, relevant_history

SIZE, FRAMES = (16, 16), 4


def make_checkpoint(directory: Path, attention: str = "context_causal", context_shots: int = 9, seed: int = 0,
                    text_dropout: float = 0.0) -> Path:
    """A tiny lct-debug export with seeded N(0, 0.02) weights (a fresh LCT outputs v = 0: adaLN-Zero)."""
    model = LCT(PRESETS["lct-debug"].with_(attention=attention, context_shots=context_shots))
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data.normal_(0.0, 0.02, generator=gen)
    write_export(model, directory / "export", text=TextEncoderConfig(), codec=LatentCodecConfig(size=SIZE),
                 frames=FRAMES, fps=8.0, step=7, text_dropout=text_dropout)
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def bundle(run_dir):
    return load_bundle(run_dir)


def write_scene(directory: Path, shots: list[dict], **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"global": "Character 1: a red disc. Environment: a blue room.", "shots": shots,
           "seed": 3, "steps": 2} | extra
    path = directory / "scene.yaml"
    path.write_text(json.dumps(doc))                     # JSON is YAML
    return path


SHOTS = [{"prompt": "Character 1 slides left"}, {"prompt": "[SHOT CUT] wide shot of the room"},
         {"prompt": "close-up of Character 1", "frames": 6}]


def run_mode(bundle, tmp_path, mode, shots=SHOTS, **kw):
    return generate(bundle, plan_scene(load_scene(write_scene(tmp_path, shots)), bundle, mode, **kw))


# -- determinism, conditioning, cache --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["joint", "autoregressive"])
def test_deterministic_under_a_seed(bundle, tmp_path, mode):
    a, b = run_mode(bundle, tmp_path, mode), run_mode(bundle, tmp_path, mode)
    other = run_mode(bundle, tmp_path, mode, seed=4)
    assert [tuple(z.shape) for z in a.latents] == [(3, 4, 16, 16), (3, 4, 16, 16), (3, 6, 16, 16)]
    for x, y, z in zip(a.latents, b.latents, other.latents):
        assert torch.equal(x, y)
        assert not torch.allclose(x, z)
    write_outputs(a, bundle, tmp_path / "a")
    write_outputs(b, bundle, tmp_path / "b")
    assert (tmp_path / "a/latents.safetensors").read_bytes() == (tmp_path / "b/latents.safetensors").read_bytes()


def test_a_conditioned_shot_at_t0_comes_out_unchanged(bundle, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ref.png")
    shots = [SHOTS[0], {"prompt": "wide shot", "condition": {"image": "ref.png", "t": 0.0}}, SHOTS[2]]
    plan = plan_scene(load_scene(write_scene(tmp_path, shots)), bundle)       # default: conditioned
    assert plan.mode == "conditioned"
    result = generate(bundle, plan)
    frames = bundle.codec.decode(result.latents[1]).numpy()                   # (F, H, W, 3)
    assert np.abs(frames.astype(int) - image[None].astype(int)).max() <= 1   # uint8 rounding only
    joint = run_mode(bundle, tmp_path, "joint")
    assert not torch.allclose(result.latents[2], joint.latents[2])            # shot 2 sees the condition


def test_an_image_condition_is_a_single_frame_shot_unless_frames_are_set(bundle, tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ref.png")
    single = [{"prompt": "still", "condition": {"image": "ref.png"}}, SHOTS[1]]
    plan = plan_scene(load_scene(write_scene(tmp_path, single)), bundle)
    assert plan.shapes[0] == (3, 1, *SIZE) and plan.frames[0] == 1           # as training's image shots
    assert plan.shapes[1] == (3, FRAMES, *SIZE)
    repeated = [{"prompt": "still", "frames": 4, "condition": {"image": "ref.png"}}, SHOTS[1]]
    plan = plan_scene(load_scene(write_scene(tmp_path, repeated)), bundle)
    assert plan.shapes[0] == (3, 4, *SIZE)
    frames = bundle.codec.decode(plan.given[0]).numpy()
    assert all(np.array_equal(frames[0], f) for f in frames)


def test_references_are_seen_by_every_shot_but_not_in_the_film(bundle, tmp_path):
    rng = np.random.default_rng(3)
    for name in ("hero.png", "other.png"):
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(tmp_path / name)
    shots = SHOTS[:2]
    with_ref = load_scene(write_scene(tmp_path, shots, references=[{"image": "hero.png", "prompt": "Character 1"}]))
    plan = plan_scene(with_ref, bundle, "joint")
    assert plan.mode == "conditioned" and plan.references == 1 and plan.shapes[0] == (3, 1, *SIZE)
    result = generate(bundle, plan)
    assert result.shots == [[1], [2]]                                         # the reference is no output
    plain = run_mode(bundle, tmp_path, "joint", shots=shots)
    other = generate(bundle, plan_scene(load_scene(write_scene(
        tmp_path, shots, references=[{"image": "other.png", "prompt": "Character 1"}])), bundle, "joint"))
    for k in (1, 2):                                                          # every shot sees the reference
        assert not torch.allclose(result.latents[k], plain.latents[k - 1], atol=1e-4)
        assert (result.latents[k] - other.latents[k]).abs().max() > 1e-6     # ... and its content
    files = write_outputs(result, bundle, tmp_path / "out")
    assert sorted(p.name for p in files if p.name.startswith("shot-")) == ["shot-000.mp4", "shot-001.mp4"]
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert record["references"] == 1 and [s["reference"] for s in record["shots"]] == [True, False, False]
    ar = generate(bundle, plan_scene(with_ref, bundle, "autoregressive"))
    assert [s["history"] for s in ar.record["shots"]] == [[], [0], [0, 1]]    # references always history
    with pytest.raises(SceneError, match="references are for scenes of shots"):
        plan_scene(with_ref, bundle, "extend")
    with pytest.raises(SceneError, match="reference 0: image 'missing.png' not found"):
        load_scene(write_scene(tmp_path / "m", shots, references=[{"image": "missing.png"}]))


def test_guidance_is_on_by_default_when_trained_with_prompt_dropout(bundle, tmp_path):
    dropped = load_bundle(make_checkpoint(tmp_path / "d", text_dropout=0.1))
    spec = load_scene(write_scene(tmp_path, SHOTS))
    assert plan_scene(spec, dropped, "joint").sampler.cfg_scale == DEFAULT_CFG > 1
    assert plan_scene(spec, bundle, "joint").sampler.cfg_scale == 1.0         # no null prompt learnt: off
    assert plan_scene(spec, dropped, "joint", cfg=1.0).sampler.cfg_scale == 1.0
    explicit = load_scene(write_scene(tmp_path / "e", SHOTS, cfg=2.0))
    assert plan_scene(explicit, dropped, "joint").sampler.cfg_scale == 2.0


def test_a_clip_condition_is_sampled_at_the_checkpoint_fps(bundle, tmp_path):
    video = np.random.default_rng(1).integers(0, 256, (8, 24, 20, 3), dtype=np.uint8)
    (tmp_path / "ref.mp4").write_bytes(encode_mp4(video, fps=8.0))
    shots = [{"prompt": "from the clip", "condition": {"clip": "ref.mp4"}}, SHOTS[1]]
    result = generate(bundle, plan_scene(load_scene(write_scene(tmp_path, shots)), bundle))
    expected = decode_clip((tmp_path / "ref.mp4").read_bytes(), FRAMES, 8.0, SIZE)   # (F, H, W, 3)
    frames = bundle.codec.decode(result.latents[0]).numpy()
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1


def test_autoregressive_cache_equals_recompute_with_the_pool(tmp_path):
    bundle = load_bundle(make_checkpoint(tmp_path / "c3", context_shots=3))       # history cap 2
    shots = [{"prompt": p} for p in ("a red car on a highway", "a chef in a kitchen", "the chef tastes sauce",
                                     "the red car parks", "the red car drives at night")]
    plan = plan_scene(load_scene(write_scene(tmp_path, shots)), bundle, "autoregressive")
    cached = generate(bundle, plan, use_cache=True)
    recomputed = generate(bundle, plan, use_cache=False)
    for a, b in zip(cached.latents, recomputed.latents):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    record = cached.record["shots"]
    assert all(len(s["history"]) <= 2 for s in record)
    assert "rebuilt" in [s["kv_cache"] for s in record[1:]]                   # the pool left the prefix
    assert [s["kv_cache"] for s in recomputed.record["shots"]] == ["none"] * 5


def test_shot_by_shot_equals_the_sampler_when_every_shot_fits(bundle):
    gen = torch.Generator().manual_seed(1)
    scene = Scene(torch.randn(5, 384, generator=gen),
                  [Shot(torch.randn(4, 384, generator=gen), torch.zeros(3, 2, 8, 8)) for _ in range(4)])
    config = SamplerConfig(steps=3, cfg_scale=2.0, seed=5)
    ref = sample(bundle.model, scene, config, mode="autoregressive")
    ours = sample_shots(bundle.model, scene, config, lambda k: recent_history(k, 8))
    for a, b in zip(ref, ours.latents):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert ours.cache == ["rebuilt", "reused", "reused", "reused"]


# -- the history pool -------------------------------------------------------------------------------
def test_history_pool_picks_the_most_relevant_shots(bundle):
    prompts = ["a red car drives along a highway", "a chef chops onions in a kitchen",
               "the chef stirs a pot in the kitchen", "the chef tastes the sauce in the kitchen",
               "[SHOT CUT] the red car speeds along the highway at night"]
    feats = prompt_features(bundle.text, prompts)
    assert relevant_history(feats, 4, cap=4) == [0, 1, 2, 3]                  # all fit: all earlier shots
    chosen = relevant_history(feats, 4, cap=2)
    assert 0 in chosen and chosen == sorted(chosen)                          # the car shot, though oldest
    assert recent_history(4, 2) == [2, 3]                                    # what recency would pick
    # constructed features: relevance, then recency on ties, chronological output
    f = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0], [0.9, 0.1]])
    assert relevant_history(f, 4, cap=1) == [2]
    assert relevant_history(f, 4, cap=3) == [0, 2, 3]


def test_extend_concatenates_segments_into_one_shot(bundle, tmp_path):
    segments = [{"prompt": "Character 1 slides left"}, {"prompt": "Character 1 keeps sliding"},
                {"prompt": "Character 1 stops"}]
    result = run_mode(bundle, tmp_path, "extend", shots=segments)
    assert result.shots == [[0, 1, 2]]
    assert result.prompts == [s["prompt"] for s in segments]                  # no "[SHOT CUT]"
    assert [s["history"] for s in result.record["shots"]] == [[], [0], [1]]
    files = write_outputs(result, bundle, tmp_path / "out")
    assert [p.name for p in files if p.name.startswith("shot-")] == ["shot-000.mp4"]


# -- bad scenes ---------------------------------------------------------------------------------------
def test_scene_errors_teach(bundle, tmp_path):
    with pytest.raises(SceneError, match=r"shots\.0\.promt: Extra inputs are not permitted"):
        load_scene(write_scene(tmp_path / "a", [{"promt": "x"}]))
    with pytest.raises(SceneError, match="shots: List should have at least 1 item"):
        load_scene(write_scene(tmp_path / "b", []))
    with pytest.raises(SceneError, match=r"shot 1: condition image 'missing.png' not found"):
        load_scene(write_scene(tmp_path / "c", [SHOTS[0], {"prompt": "x", "condition": {"image": "missing.png"}}]))
    many = load_scene(write_scene(tmp_path / "d", [{"prompt": f"shot {i}"} for i in range(10)]))
    with pytest.raises(SceneError, match="10 shots but the model sees at most context_shots=9.*autoregressive"):
        plan_scene(many, bundle, "joint")
    with pytest.raises(SceneError, match="needs at least one shot with a `condition"):
        plan_scene(load_scene(write_scene(tmp_path / "e", SHOTS)), bundle, "conditioned")
    with pytest.raises(SceneError, match="steps: Input should be greater than or equal to 1"):
        plan_scene(load_scene(write_scene(tmp_path / "f", SHOTS)), bundle, "joint", steps=0)
    # a patch of 2 latent frames: 5 frames cannot be cut into patches
    model = LCT(PRESETS["lct-debug"].with_(patch=(2, 2, 2)))
    fake = SimpleNamespace(model=model, codec=build_codec(LatentCodecConfig(size=SIZE)), size=SIZE, frames=4, fps=8.0)
    with pytest.raises(SceneError, match=r"shot 0: frames=5 .* not a multiple of the model's patch \(2, 2, 2\)"):
        plan_scene(load_scene(write_scene(tmp_path / "g", [{"prompt": "x", "frames": 5}])), fake, "joint")


# -- guidance's negative prompt, on a tiny Wan from disk ---------------------------------------------------
@pytest.fixture(scope="module")
def wan_run(wan_dir, tmp_path_factory) -> Path:
    """A context-causal tiny Wan export as `lct train --pretrained` writes one: its umT5 and VAE, Wan's shift."""
    from model.wan import load_wan_transformer

    run = tmp_path_factory.mktemp("wan-run")
    write_export(load_wan_transformer(wan_dir, attention="context_causal"), run / "export",
                 text=TextEncoderConfig(kind="t5", path=str(wan_dir / "text_encoder"), max_tokens=512),
                 codec=LatentCodecConfig(kind="vae", path=str(wan_dir / "vae"), size=SIZE),
                 frames=5, fps=8.0, step=1, text_dropout=0.1, flow_shift=3.0)
    return run


@pytest.fixture(scope="module")
def wan_bundle(wan_run):
    return load_bundle(wan_run)


SAME = [{"prompt": "a red disc", "frames": 5}, {"prompt": "[SHOT CUT] a red disc", "frames": 5}]


@pytest.mark.parametrize("mode", ["joint", "autoregressive"])
def test_wan_negative_prompt_equal_to_every_prompt_is_no_guidance(wan_bundle, tmp_path, mode):
    """global and shot prompts all "[SHOT CUT] a red disc": with that negative the unconditional branch is
    the conditional one, so cfg 4 gives cfg 1's latents; Wan's default ("") or another negative does not,
    and at cfg 1 the negative is unused. (Fails if the negative prompt is ignored.)"""
    def run(name, **extra):
        scene = write_scene(tmp_path / name, SAME, **({"global": "[SHOT CUT] a red disc"} | extra))
        return generate(wan_bundle, plan_scene(load_scene(scene), wan_bundle, mode)).latents

    plain = run("off", cfg=1.0)
    assert all(torch.equal(a, b) for a, b in zip(run("same", cfg=4.0, negative="[SHOT CUT] a red disc"), plain))
    assert not torch.allclose(run("default", cfg=4.0)[1], plain[1], atol=1e-5)
    assert not torch.allclose(run("other", cfg=4.0, negative="blurry")[1], plain[1], atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(run("unused", cfg=1.0, negative="blurry"), plain))


def test_wan_guidance_defaults_to_the_empty_prompt_at_scale_5(wan_bundle, bundle, tmp_path):
    """Wan: cfg 5 and the empty string's umT5 features (diffusers' WanPipeline; what training's prompt
    dropout feeds a Wan, model.sampling.negative_features); lct's MMDiT keeps its null prompt."""
    from model.sampling import negative_features

    shots = [{"prompt": "Character 1 slides left", "frames": 5}]
    spec = load_scene(write_scene(tmp_path, shots))
    assert plan_scene(spec, wan_bundle, "joint").sampler.cfg_scale == WAN_CFG == 5.0
    empty = wan_bundle.text([""])
    features = negative_features(wan_bundle.model.cfg, wan_bundle.text)
    assert features.shape[0] >= 1 and torch.equal(features, empty.tokens[0][empty.mask[0]])   # not the null prompt
    default = generate(wan_bundle, plan_scene(spec, wan_bundle, "joint"))
    explicit = generate(wan_bundle, plan_scene(spec, wan_bundle, "joint", negative=""))
    assert all(torch.equal(a, b) for a, b in zip(default.latents, explicit.latents))
    assert default.record["negative"] == "" and default.record["cfg"] == 5.0
    native = generate(bundle, plan_scene(load_scene(write_scene(tmp_path / "n", SHOTS[:1])), bundle, "joint", cfg=3.0))
    assert native.record["negative"] is None                                      # the null prompt
    assert negative_features(bundle.model.cfg, bundle.text) is None


def test_cli_negative_prompt_overrides_the_scene_file_and_is_recorded(wan_run, tmp_path):
    runner = CliRunner()
    shots = [{"prompt": "Character 1 slides left", "frames": 5}]

    def run(name, *flags, **extra):
        scene = write_scene(tmp_path / name, shots, steps=1, **extra)
        result = runner.invoke(app, ["generate", "--checkpoint", str(wan_run), "--scene", str(scene),
                                     "--out", str(tmp_path / name / "out"), *flags])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / name / "out" / "generation.json").read_text())

    in_file = run("file", negative="blurry, static")
    flag = run("flag", "--negative-prompt", "blurry, static", negative="sharp")
    default = run("default")
    assert in_file["negative"] == flag["negative"] == "blurry, static" and default["negative"] == ""
    assert in_file["latents_sha256"] == flag["latents_sha256"] != default["latents_sha256"]


# -- the CLI ---------------------------------------------------------------------------------------------
def test_cli_generate_writes_every_output(run_dir, tmp_path):
    scene = write_scene(tmp_path, SHOTS)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(run_dir), "--scene", str(scene),
                                      "--out", str(out), "--mode", "autoregressive", "--steps", "2"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["generation.json", "latents.safetensors", "logs", "scene.mp4", "sheet.png",
                     "shot-000.mp4", "shot-001.mp4", "shot-002.mp4"]   # logs/: the run's log (pipelines/runlog.py)
    assert [p.name.split("-")[0] for p in (out / "logs").iterdir()] == ["generate"]
    record = json.loads((out / "generation.json").read_text())
    assert record["mode"] == "autoregressive" and record["steps"] == 2 and record["seed"] == 3
    assert record["checkpoint"]["step"] == 7 and record["device"] == "cpu"
    assert [s["history"] for s in record["shots"]] == [[], [0], [0, 1]]
    assert record["shots"][1]["prompt"] == "[SHOT CUT] wide shot of the room"   # never doubled


def test_cli_bad_scene_exits_2_naming_the_problem(run_dir, tmp_path):
    scene = write_scene(tmp_path, [{"prompt": "x", "frame": 4}])
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(run_dir), "--scene", str(scene),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())                                     # rich wraps long lines
    assert "shots.0.frame" in said and "Extra inputs are not permitted" in said
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path), "--scene", str(scene),
                                       "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "is not an LCT run or export" in " ".join(missing.output.split())


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_commands_have_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--checkpoint" in result.output


def test_cli_refuses_an_absurd_allocation_with_the_figure(run_dir, tmp_path):
    """frames: 200000 would need terabytes of attention scores: refused (exit 2) before anything is allocated."""
    scene = write_scene(tmp_path, [{"prompt": "x", "frames": 200000}])
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(run_dir), "--scene", str(scene),
                                      "--out", str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "GiB" in said and "needs about" in said and "free" in said, said
    assert not (tmp_path / "out").exists()


def test_cli_generate_resolves_relative_paths(run_dir, tmp_path, monkeypatch):
    """--checkpoint, --scene and --out relative to where the user stands: generation.json records absolute paths."""
    import os

    write_scene(tmp_path / "scenes", SHOTS[:1])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["generate", "--checkpoint", os.path.relpath(run_dir, tmp_path), "--scene",
                                      "scenes/scene.yaml", "--out", "out-rel", "--steps", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out-rel" / "generation.json").read_text())
    assert record["checkpoint"]["path"] == str((run_dir / "export").resolve())
