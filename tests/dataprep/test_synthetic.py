"""Synthetic films: deterministic, self-consistent truth, and the properties detectors rely on."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from dataprep.synthetic import (
    SynthConfig,
    ambiguous_frames,
    cut_f1,
    hard_cuts,
    load_truth,
    make_films,
    plan_film,
    truth_of,
)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> list[Path]:
    calls = []
    paths = make_films(SynthConfig(), tmp_path_factory.mktemp("synth"), progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (6, 6)
    return paths


def decode(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]  # each (H, W, 3)
        return stream, frames


def test_same_seed_gives_the_same_bytes_and_another_seed_another_film(default_set, tmp_path):
    again = make_films(SynthConfig(n_films=2), tmp_path)  # film i depends only on (seed, i)
    assert [p.name for p in again] == ["synth-000.mp4", "synth-001.mp4"]
    for new, old in zip(again, default_set):
        for suffix in (".mp4", ".truth.json", ".captions.json"):
            assert new.with_suffix(suffix).read_bytes() == old.with_suffix(suffix).read_bytes(), (new, suffix)
    other = SynthConfig(seed=1)
    assert truth_of(plan_film(1, 0, other)) != load_truth(default_set[0])


def test_truth_tiles_the_film_and_matches_the_mp4(default_set):
    for path in default_set:
        truth = load_truth(path)
        shots, scenes = truth["shots"], truth["scenes"]
        assert shots[0]["start_frame"] == 0 and shots[-1]["end_frame"] == truth["n_frames"]
        assert all(a["end_frame"] == b["start_frame"] for a, b in zip(shots, shots[1:]))
        assert all(s["end_frame"] - s["start_frame"] >= 20 for s in shots)
        assert [i for sc in scenes for i in sc["shot_indices"]] == list(range(len(shots)))
        for k, sc in enumerate(scenes):
            assert sc["start_frame"] == shots[sc["shot_indices"][0]]["start_frame"]
            assert sc["end_frame"] == shots[sc["shot_indices"][-1]]["end_frame"]
            assert {shots[i]["scene_index"] for i in sc["shot_indices"]} == {k}
            ids = {c["id"] for c in sc["characters"]}
            assert 1 <= len(ids) <= 3 and all(set(shots[i]["characters"]) <= ids for i in sc["shot_indices"])
        assert shots[0]["transition_in"] == "none"
        for a, b in zip(shots, shots[1:]):  # every cut inside a scene re-frames
            assert a["framing"] != b["framing"] or a["scene_index"] != b["scene_index"]
        stream, frames = decode(path)
        assert len(frames) == truth["n_frames"]
        assert stream.average_rate == Fraction(truth["fps"])
        assert frames[0].shape == (truth["height"], truth["width"], 3)
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_default_set_varies_fps_and_size_and_lasts_about_8_to_15_s(default_set):
    truths = [load_truth(p) for p in default_set]
    assert {t["fps"] for t in truths} == {"24", "25", "30000/1001"}
    assert len({(t["width"], t["height"]) for t in truths}) >= 2
    seconds = [t["n_frames"] / Fraction(t["fps"]) for t in truths]
    assert all(4 <= s <= 20 for s in seconds), seconds


def test_hard_cases_in_some_films_only_and_none_when_disabled(default_set):
    truths = [load_truth(p) for p in default_set]
    kinds = {tr["kind"] for t in truths for tr in t["transitions"]}
    assert kinds & {"fade", "dissolve"} and any(t["flashes"] for t in truths)
    assert any(not t["flashes"] and not t["transitions"] for t in truths)
    for t in truths:
        for tr in t["transitions"]:  # the boundary is the transition's midpoint
            mid = tr["start_frame"] + (tr["end_frame"] - tr["start_frame"]) // 2
            assert tr["kind"] in [s["transition_in"] for s in t["shots"] if s["start_frame"] == mid]
            assert 8 <= tr["end_frame"] - tr["start_frame"] <= 15
        assert not set(t["flashes"]) & {s["start_frame"] for s in t["shots"]}
        assert len(hard_cuts(t)) == sum(s["transition_in"] == "cut" for s in t["shots"])
    cfg = SynthConfig(hard_cases=False)
    plain = [truth_of(plan_film(0, i, cfg)) for i in range(cfg.n_films)]
    assert all(not t["flashes"] and not t["transitions"] for t in plain)
    assert all(s["transition_in"] in ("none", "cut") for t in plain for s in t["shots"])


def test_sidecar_captions_match_the_truth(default_set):
    for path in default_set:
        truth, side = load_truth(path), json.loads(path.with_suffix(".captions.json").read_text())
        fps = Fraction(truth["fps"])
        assert side["version"] == 1 and len(side["shots"]) == len(truth["shots"])
        for cap, shot in zip(side["shots"], truth["shots"]):
            assert cap["start_s"] == pytest.approx(shot["start_frame"] / fps, abs=1e-5)
            assert cap["end_s"] == pytest.approx(shot["end_frame"] / fps, abs=1e-5)
            named = {int(w) for w in cap["caption"].replace(";", " ").split() if w.isdigit()}
            assert named == set(shot["characters"]), cap["caption"]
        assert len(side["scenes"]) == len(truth["scenes"])
        for cap, scene in zip(side["scenes"], truth["scenes"]):
            assert cap["start_s"] == pytest.approx(scene["start_frame"] / fps, abs=1e-5)
            text = cap["global_caption"]
            assert text.startswith("[Character] ") and "[Environment] " in text and "[Story] " in text
            for c in scene["characters"]:
                assert f"Character {c['id']}: {c['description']}." in text
            assert scene["environment"] in text


def test_content_detector_finds_the_hard_cuts(default_set):
    """The property the shot stage relies on: default ContentDetector, F1 >= 0.95 at ±1 frame."""
    from scenedetect import ContentDetector, SceneManager, open_video

    pred_all, truth_all = [], []
    for k, path in enumerate(default_set):
        truth = load_truth(path)
        manager = SceneManager()
        manager.add_detector(ContentDetector())
        manager.detect_scenes(open_video(str(path), backend="pyav"))
        pred = [start.frame_num for start, _ in manager.get_scene_list()[1:]]
        skip = ambiguous_frames(truth)  # fades, dissolves and flashes may or may not fire
        pred = [p for p in pred if not any(abs(p - f) <= 1 for f in skip)]
        offset = 100_000 * k  # pool all films into one score
        pred_all += [p + offset for p in pred]
        truth_all += [c + offset for c in hard_cuts(truth)]
    precision, recall, f1 = cut_f1(pred_all, truth_all, tol=1)
    assert len(truth_all) >= 15
    assert f1 >= 0.95, (precision, recall, f1)


def test_shots_of_a_scene_share_a_palette_and_scenes_do_not(default_set):
    def histogram(img):  # (H, W, 3) -> (512,) 8x8x8 RGB, sums to 1
        h, _ = np.histogramdd(img.reshape(-1, 3), bins=(8, 8, 8), range=((0, 256),) * 3)
        return h.ravel() / h.sum()

    within, across = [], []
    for path in default_set:
        shots = load_truth(path)["shots"]
        _, frames = decode(path)
        hists = [histogram(frames[(s["start_frame"] + s["end_frame"]) // 2]) for s in shots]
        for a, b, ha, hb in zip(shots, shots[1:], hists, hists[1:]):
            (within if a["scene_index"] == b["scene_index"] else across).append(np.minimum(ha, hb).sum())
    assert within and across
    assert min(within) > 0.5 > 0.2 > max(across), (min(within), max(across))


def test_cut_f1_matches_one_to_one_within_tolerance():
    assert cut_f1([10, 20, 30], [10, 21, 40], tol=1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert cut_f1([10, 11], [10], tol=1) == pytest.approx((0.5, 1.0, 2 / 3))  # one prediction per cut
    assert cut_f1([], [], tol=1) == (1.0, 1.0, 1.0)
    assert cut_f1([], [5], tol=1) == (1.0, 0.0, 0.0)
    assert cut_f1([7], [5], tol=2)[2] == 1.0


def test_config_errors_teach():
    with pytest.raises(ValidationError, match="shots under 20 frames"):
        SynthConfig(shot_seconds=(0.3, 1.0))
    with pytest.raises(ValidationError, match="even"):
        SynthConfig(sizes=[(321, 240)])
    with pytest.raises(ValidationError, match="extra"):
        SynthConfig(n_film=3)
    with pytest.raises(FileNotFoundError, match="lct synth"):
        load_truth(Path("/nonexistent/film.mp4"))


def test_hidden_captions_never_name_the_appearance_but_the_truth_does(tmp_path):
    from dataprep.synthetic import COLOURS, PALETTES, PATTERNS, SHAPES, TEXTURES, captions_of, draw_shot_frame, plan_film, truth_of

    full_cfg = SynthConfig(n_films=3, hard_cases=False)
    cfg = SynthConfig(n_films=3, hard_cases=False, captions="hidden")
    words = set(COLOURS) | set(SHAPES) | set(SHAPES.values()) | {p for p in PATTERNS if p != "plain"} | set(TEXTURES)
    words |= {w for name, *_ in PALETTES for w in name.split()[1:]} - {"room"}   # "a room" is what hidden says
    palettes = set()
    for i in range(cfg.n_films):
        spec, full = plan_film(cfg.seed, i, cfg), plan_film(cfg.seed, i, full_cfg)
        caps = captions_of(spec)
        text = " ".join([s["global_caption"] for s in caps["scenes"]] + [s["caption"] for s in caps["shots"]]).lower()
        leaked = sorted(w for w in words if w in text.replace(",", " ").replace(".", " ").split())
        assert not leaked, (leaked, text[:300])
        assert "character 1" in text
        assert np.array_equal(draw_shot_frame(spec, spec.shots[0], 0.5), draw_shot_frame(full, full.shots[0], 0.5))
        truth = truth_of(spec)
        assert truth["captions"] == "hidden"
        for scene in truth["scenes"]:
            h = scene["hidden"]
            assert h["palette"] and h["texture"] in TEXTURES and h["characters"][0]["colour"] in COLOURS
            palettes.add(h["palette"])
        assert any(c in " ".join(s["global_caption"] for s in captions_of(full)["scenes"]) for c in COLOURS)
    assert len(palettes) >= 3                                   # appearance drawn per scene


def test_scales_coarsen_the_backdrop_and_grow_the_characters_with_the_same_draws():
    """texture_scale / character_scale (the demo's 16x16 frames) change the drawing, not the plan."""
    from dataprep.synthetic import draw_shot_frame

    base = SynthConfig(n_films=1, hard_cases=False, captions="hidden")
    coarse = base.model_copy(update={"texture_scale": 3.0, "character_scale": 2.5})
    a, b = plan_film(0, 0, base), plan_film(0, 0, coarse)
    assert truth_of(a) == truth_of(b)                                   # same shots, scenes, attributes
    for env_a, env_b in zip((s.environment for s in a.scenes), (s.environment for s in b.scenes)):
        assert env_b.cell == pytest.approx(3.0 * env_a.cell) and env_b.texture == env_a.texture

    def edges(img):  # share of horizontally adjacent pixel pairs that differ
        return float((np.abs(np.diff(img.astype(int), axis=1)).sum(-1) > 30).mean())

    shots = [sh for sh in a.shots if sh.framing == "wide"]
    fine = np.mean([edges(draw_shot_frame(a, sh, 0.5)) for sh in shots])
    coarser = np.mean([edges(draw_shot_frame(b, sh, 0.5)) for sh in shots])
    assert coarser < 0.6 * fine, (coarser, fine)                        # fewer texture edges per row

    shot = next(sh for sh in a.shots if sh.characters)
    no_chars = plan_film(0, 0, base)
    for scene in no_chars.scenes:
        scene.characters = []
    backdrop = draw_shot_frame(no_chars, no_chars.shots[a.shots.index(shot)], 0.5)
    drawn = lambda spec: int((draw_shot_frame(spec, spec.shots[a.shots.index(shot)], 0.5) != backdrop).any(-1).sum())
    b_same_backdrop = plan_film(0, 0, base.model_copy(update={"character_scale": 2.5}))
    assert drawn(b_same_backdrop) > 3 * drawn(a) > 0                     # area ~ radius^2 = 6.25x
    with pytest.raises(ValidationError):
        SynthConfig(texture_scale=0)
