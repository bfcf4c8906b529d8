"""`lct eval`: generate held-out scenes of a curated dataset in every mode and score them like the real ones.

    keys = heldout_keys(DATA, 8)           # the trainer excludes the same keys
    report = evaluate(bundle, DATA, OUT, scenes=8, steps=30)   # OUT/eval.json + OUT/eval.md

Held-out rule (dataprep.dataset.heldout_keys, shared with the trainer's `data.holdout`): the n
scenes with the smallest sha1(scene key), read from the manifest. n scenes held out are a
subset of n + 1 held out, so `lct eval --scenes N` with N <= the run's `data.holdout` scores
scenes the model never trained on. Scenes of one film share characters and settings, so a
held-out scene may still resemble training scenes of its film.

For each held-out scene (its global caption and shot captions, cut to the model's context_shots
shots) the checkpoint generates, at its own frames / size / fps:
    joint           all shots together
    autoregressive  shot by shot with the history pool (training/history.py)
    conditioned     shot 0 given clean (t = 0) from the real clip, the others generated
    independent     the baseline: every shot generated alone as a one-shot scene (same global
                    prompt, noise seed + i for shot i so the shots do not share their noise)
and the real scene, decoded the same way, is scored as the reference row. With "extend" in the
modes, the first shot of each held-out scene long enough for two segments (2 x frames / fps) is
also extended: its first segment given clean, the next generated in `lct generate --mode extend`
(no "[SHOT CUT]"), and the generated segment's hidden attribute is compared with the real next
segment's (`extend` in eval.json: the error and its cross-scene baseline, and the same for the
given segment itself, "copy": how much a shot changes from one segment to the next).

Noise: seed k of a scene draws its noise from `noise_seed(seed + k, scene key)`, so no two held-out
scenes start from the same noise. With one seed for all scenes, shot i of every scene would begin
from the same tensor: shots of *different* scenes alike, the between-scene distance too small, every
generated row's consistency and spread pulled down (the independent row below 0) — a bias of the
experiment, not of the model.

The criteria's consistency (training/consistency.py) is normalised over scenes: 1 - within-scene /
between-scene distance of the shots' mean colours, with a bootstrap interval over scenes; the same
score with a colour-histogram descriptor is reported beside it (`consistency_histogram`).

Metrics (per scene, then the mean over scenes; a metric needing two shots skips 1-shot scenes):
    clip_consistency  mean pairwise cosine between the shots' CLIP image embeddings (each shot =
                      the normalised mean of K evenly spaced frames, as `lct curate` embeds). The
                      CLIP model is the dataset's (dataset.json `config.embed`); a random-init CLIP
                      is recorded as such and its numbers only measure low-level similarity.
    hist_consistency  mean pairwise colour-histogram intersection of the shots (needs no weights).
    text_alignment    mean cosine of each shot's CLIP image embedding with its caption's CLIP text
                      embedding; "n/a" unless pretrained CLIP weights are configured.
    frame_diff        temporal smoothness inside shots: mean |frame[t+1] - frame[t]| / 255 (0 = static).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dataprep.config import EmbedConfig
from dataprep.dataset import heldout_keys, load_scenes
from dataprep.media import cover_crop, decode_clip, read_frames, window_indices
from dataprep.embed import ClipEmbedder
from dataprep.scenes import colour_histogram, histogram_similarity
from model.export import InferenceBundle
from training.generate import Plan, SceneSpec, ShotSpec, default_cfg, generate, plan_scene
from training.consistency import (
    KEYFRAMES, attribute, attribute_error, between_distance, bootstrap, consistency, descriptor, guard,
    histogram_descriptor, keyframes, resampled,
)
from training.probe import PROBE_T, probe_losses

MODES = ("joint", "autoregressive", "conditioned", "independent", "extend")
ROWS = ("real",) + MODES[:-1]                    # extend is scored apart (one shot, by its continuation)
METRICS = ("clip_consistency", "hist_consistency", "text_alignment", "frame_diff")
OnProgress = Callable[[str, int, int], None]     # (what, done, total)


# -- metrics ----------------------------------------------------------------------------------
def pairwise_mean(items: list, similarity: Callable) -> float | None:
    """Mean similarity over all unordered pairs; None with fewer than two items."""
    pairs = [similarity(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items))]
    return float(np.mean(pairs)) if pairs else None


def frame_diff(frames: np.ndarray) -> float:
    """(F, H, W, 3) uint8 -> mean |frame[t+1] - frame[t]| / 255; 0 for a static (or 1-frame) shot."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() / 255.0)


class Scorer:
    """Scores one scene (a list of shots' frames); loads CLIP once."""

    def __init__(self, embed: EmbedConfig):
        self.clip = ClipEmbedder(embed)
        self.tokenizer = None
        if self.clip.pretrained_loaded:
            import open_clip

            self.tokenizer = open_clip.get_tokenizer(embed.model)

    @property
    def description(self) -> dict:
        return self.clip.description

    def text_alignment(self, image_emb: np.ndarray, captions: list[str]) -> float | None:
        if self.tokenizer is None:
            return None
        with torch.inference_mode():
            text = self.clip.model.encode_text(self.tokenizer(captions).to(self.clip.cfg.device)).float().cpu()
        text = torch.nn.functional.normalize(text, dim=-1).numpy()          # (S, D)
        return float((text * image_emb).sum(-1).mean())

    def __call__(self, shots: list[np.ndarray], captions: list[str]) -> dict:
        if not shots:                     # nothing scored (the conditioned row of a 1-shot scene): n/a, never NaN
            return dict.fromkeys(METRICS)
        emb = self.clip([keyframes(f) for f in shots])                      # (S, D) unit vectors
        hists = [colour_histogram(keyframes(f)) for f in shots]
        return {
            "clip_consistency": pairwise_mean(list(emb), lambda a, b: float(np.dot(a, b))),
            "hist_consistency": pairwise_mean(hists, histogram_similarity),
            "text_alignment": self.text_alignment(emb, captions),
            "frame_diff": float(np.mean([frame_diff(f) for f in shots])),
        }


def mean_metrics(per_scene: list[dict]) -> dict:
    """Mean of each metric over the scenes that have it (None when none has)."""
    out = {}
    for m in METRICS + ("seconds",):
        values = [s[m] for s in per_scene if s.get(m) is not None]
        out[m] = float(np.mean(values)) if values else None
    return out


# -- generation of the rows ------------------------------------------------------------------------
def _decode(bundle: InferenceBundle, latents: list[torch.Tensor]) -> list[np.ndarray]:
    return [bundle.codec.decode(z).numpy() for z in latents]


def generate_row(bundle: InferenceBundle, spec: SceneSpec, mode: str, real_shot0: np.ndarray) -> list[np.ndarray]:
    """The shots (F, H, W, 3) uint8 of one held-out scene generated in `mode`."""
    if mode == "independent":
        shots = []
        for i, shot in enumerate(spec.shots):
            alone = spec.model_copy(update={"shots": [shot], "seed": spec.seed + i})
            shots += _decode(bundle, generate(bundle, plan_scene(alone, bundle, "joint")).latents)
        return shots
    if mode == "conditioned":
        plan = plan_scene(spec, bundle, "joint")
        given = {0: bundle.codec.encode(torch.from_numpy(real_shot0)).float()}
        plan = dataclasses.replace(plan, mode="conditioned", given=given,
                                   sampler=dataclasses.replace(plan.sampler, t_c=0.0))
        return _decode(bundle, generate(bundle, plan).latents)
    plan: Plan = plan_scene(spec, bundle, mode)
    return _decode(bundle, generate(bundle, plan).latents)


def next_segment(mp4: bytes, bundle: InferenceBundle) -> np.ndarray | None:
    """The segment (F, H, W, 3) of a shot that follows its first one (decode_clip at start 0), at the
    bundle's frames / fps / size; None when the shot is shorter than two segments."""
    src, src_fps = read_frames(mp4)
    seg_s = bundle.frames / bundle.fps
    if len(src) / src_fps < 2 * seg_s:
        return None
    return np.stack([cover_crop(src[i], bundle.size) for i in window_indices(len(src), src_fps, bundle.frames,
                                                                             bundle.fps, seg_s)])


def noise_seed(seed: int, key: str) -> int:
    """The noise seed of scene `key` under run seed `seed`: distinct per scene, the same on every run."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def extend_row(bundle: InferenceBundle, global_caption: str, caption: str, given: np.ndarray, seed: int,
               steps: int, cfg: float) -> np.ndarray:
    """The segment (F, H, W, 3) uint8 generated after the real segment `given` of a shot (--mode extend)."""
    spec = SceneSpec.model_validate({"global": global_caption, "shots": [ShotSpec(prompt=caption)] * 2,
                                     "seed": seed, "steps": steps, "cfg": cfg})
    plan = plan_scene(spec, bundle, "extend")
    plan = dataclasses.replace(plan, given={0: bundle.codec.encode(torch.from_numpy(given)).float()})
    return _decode(bundle, generate(bundle, plan).latents[1:])[0]


def _stat_row(desc: list[list[list[np.ndarray]]], groups_ok: bool = True):
    """desc[seed][scene] = descriptors -> f(idx): mean over seeds of the consistency of resampled scenes."""
    def stat(idx):
        values = [consistency(*resampled(d, idx)) for d in desc]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None
    return stat


def _ci(stat, n: int, seed: int) -> dict:
    lo, hi = bootstrap(stat, n, seed=seed)
    return {"value": stat(np.arange(n)), "ci_low": lo, "ci_high": hi}


def probe_ratio(pairs: np.ndarray, idx) -> float:
    """mean clean-neighbour loss / mean pure-noise-neighbour loss of the probe pairs (n, 2) at rows idx."""
    return float(pairs[idx, 0].mean() / pairs[idx, 1].mean())


def criterion(name: str, value, ci_low, ci_high, threshold: float, passed: bool, note: str) -> dict:
    return {"name": name, "value": value, "ci_low": ci_low, "ci_high": ci_high, "threshold": threshold,
            "passed": bool(passed), "note": note}


def evaluate(
    bundle: InferenceBundle, dataset_dir: str | Path, out: str | Path, scenes: int = 32,
    modes: tuple[str, ...] = MODES, steps: int = 30, seed: int = 0, cfg: float | None = None,
    embed: EmbedConfig | None = None, on_progress: OnProgress | None = None, seeds: int = 3,
    ablation: InferenceBundle | None = None, probe: bool = True, causal: InferenceBundle | None = None,
) -> dict:
    """Generate and score the held-out scenes; writes OUT/eval.json and OUT/eval.md, returns the report.

    seeds: every generated row is made with seeds seed, seed + 1, ...; the consistency of a row is
    the mean over seeds, its 95% interval bootstraps the scenes (the same resample for all seeds).
    ablation: the same model trained with synchronous timesteps (recipe.timesteps: sync): its
    joint row ("sync_joint") and probe are added.
    causal: the context-causal fine-tune of `bundle`: the autoregressive row is generated with it
    (history through its KV-cache) instead of `bundle`.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    dataset_dir, out = Path(dataset_dir), Path(out)
    summary_path = dataset_dir / "dataset.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a curated dataset: {summary_path} is missing")
    cfg = default_cfg(bundle) if cfg is None else cfg
    embed = embed or EmbedConfig.model_validate(json.loads(summary_path.read_text())["config"]["embed"])
    keys = heldout_keys(dataset_dir, scenes)
    if not keys:
        raise ValueError(f"no held-out scenes: {dataset_dir} has no scenes (or --scenes 0)")
    real = load_scenes(dataset_dir, keys)
    scorer = Scorer(embed)
    pretrained = not scorer.description.get("random_init")
    S_max = bundle.model.cfg.context_shots
    extending = "extend" in modes
    generated = [(row, causal if row == "autoregressive" and causal is not None else bundle)
                 for row in modes if row != "extend"]
    generated += [("sync_joint", ablation)] if ablation is not None else []
    rows: dict[str, list[dict]] = {r: [] for r in ["real"] + [g for g, _ in generated]}
    # per shot feature: {row: [seed][scene] = one value per scored shot}; the real row fills every seed
    features = (descriptor, histogram_descriptor, attribute)
    desc, hdesc, attrs = ({r: [[] for _ in range(seeds)] for r in rows} for _ in features)
    probes: dict[str, list[tuple[float, float]]] = {"async": [], "sync": []}
    extended: list[dict] = []                    # per extended scene: attributes of the segments
    total, done = len(real) * (1 + (len(generated) + extending) * seeds), 0
    for scene in real:
        captions = [c or "(no caption)" for c in scene.captions[:S_max]]
        frames = [decode_clip(m, bundle.frames, bundle.fps, bundle.size) for m in scene.mp4s[:S_max]]
        for row, model in [("real", None)] + generated:
            for k in range(1 if row == "real" else seeds):
                spec = SceneSpec.model_validate({
                    "global": scene.global_caption, "shots": [ShotSpec(prompt=c) for c in captions],
                    "seed": noise_seed(seed + k, scene.key), "steps": steps, "cfg": cfg,
                })
                start = time.perf_counter()
                mode = "joint" if row == "sync_joint" else row
                shots = frames if row == "real" else generate_row(model, spec, mode, frames[0])
                seconds = None if row == "real" else time.perf_counter() - start
                scored = shots[1:] if row == "conditioned" else shots        # the given shot is not scored
                metrics = scorer(scored, captions[1:] if row == "conditioned" else captions)
                if not pretrained:
                    metrics["clip_consistency"] = None                         # random-init CLIP: not a metric
                rows[row].append({"key": scene.key, "seed": seed + k, "shots": len(shots), "scored": len(scored),
                                  "noise_seed": None if row == "real" else spec.seed, "seconds": seconds} | metrics)
                values = [[feature(f) for f in scored] for feature in features]   # once, also for the real row
                for slot in (range(seeds) if row == "real" else [k]):
                    for store, v in zip((desc, hdesc, attrs), values):
                        store[row][slot].append(v)
                done += 1
                if on_progress:
                    on_progress(f"{scene.key} {row} seed {seed + k}", done, total)
        following = next_segment(scene.mp4s[0], bundle) if extending else None
        if following is not None:                  # frames[0] is the shot's first segment
            made = [extend_row(bundle, scene.global_caption, captions[0], frames[0],
                                noise_seed(seed + k, scene.key), steps, cfg)
                    for k in range(seeds)]
            extended.append({"key": scene.key, "given": attribute(frames[0]), "next": attribute(following),
                             "made": [attribute(m) for m in made]})
        if extending:
            done += seeds
            if on_progress:
                on_progress(f"{scene.key} extend", done, total)
        if probe:
            for name, model in (("async", bundle), ("sync", ablation)):
                if model is not None:
                    p = probe_losses(model, scene.global_caption, captions, frames, noise_seed(seed, scene.key))
                    if p is not None:
                        probes[name].append(p)
    n = len(real)
    real_spread = between_distance(desc["real"][0])
    table = {}
    for row in rows:
        stat = _stat_row(desc[row])
        entry = {"consistency": _ci(stat, n, seed), "consistency_histogram": _ci(_stat_row(hdesc[row]), n, seed)}
        spreads = [between_distance(d) for d in desc[row]]
        spreads = [v for v in spreads if v is not None]
        entry["spread"] = float(np.mean(spreads)) if spreads else None
        entry["guard"] = guard(entry["spread"], real_spread)
        errs = [attribute_error(a, attrs["real"][0]) for a in attrs[row]]
        e = [x for x, _ in errs if x is not None]
        b = [y for _, y in errs if y is not None]
        entry["attribute_error"] = float(np.mean(e)) if e else None
        entry["attribute_baseline"] = float(np.mean(b)) if b else None
        table[row] = entry | mean_metrics(rows[row])

    def gap_of(d):
        j, ind = _stat_row(d["joint"]), _stat_row(d["independent"])

        def gap(idx):
            a, b = j(idx), ind(idx)
            return None if a is None or b is None else a - b
        return gap

    criteria, histogram_gap = [], None
    if "joint" in rows and "independent" in rows:
        c = _ci(gap_of(desc), n, seed)
        histogram_gap = _ci(gap_of(hdesc), n, seed)          # the same gap with the colour-histogram descriptor
        criteria.append(criterion(
            "joint_minus_independent_consistency", c["value"], c["ci_low"], c["ci_high"], 0.5,
            c["value"] is not None and c["value"] >= 0.5 and c["ci_low"] is not None and c["ci_low"] > 0.3
            and table["joint"]["guard"],
            "joint - independent normalised consistency >= 0.5, lower bound of its 95% CI > 0.3, joint passes the diversity guard"))
    if "conditioned" in rows:
        def ratio(idx):
            pairs = [attribute_error([a[i] for i in idx], [attrs["real"][0][i] for i in idx]) for a in attrs["conditioned"]]
            pairs = [(x, y) for x, y in pairs if x is not None and y]
            return float(np.mean([x / y for x, y in pairs])) if pairs else None

        c = _ci(ratio, n, seed)
        criteria.append(criterion(
            "conditioned_attribute_error_over_baseline", c["value"], c["ci_low"], c["ci_high"], 0.5,
            c["value"] is not None and c["value"] <= 0.5,
            "hidden-attribute error of the shots generated after the given shot, / the cross-scene baseline, <= 0.5"))
    extend = None
    if extended:
        def errors(idx):
            """(error, cross-scene baseline) of the extensions and of the given segments themselves, vs
            the real next segments, over the extended scenes idx."""
            made = [[e["made"][k] for k in range(seeds)] for e in (extended[i] for i in idx)]
            nexts = [[extended[i]["next"]] for i in idx]
            return attribute_error(made, nexts) + attribute_error([[extended[i]["given"]] for i in idx], nexts)

        def ext_ratio(idx):
            err, base, _, _ = errors(idx)
            return None if err is None or not base else err / base

        err, base, copy, copy_base = errors(range(len(extended)))
        c = _ci(ext_ratio, len(extended), seed)
        extend = {"scenes": len(extended), "attribute_error": err, "attribute_baseline": base, "copy_error": copy,
                  "copy_baseline": copy_base,
                  "per_scene": [{"key": e["key"], "given": e["given"].tolist(), "next": e["next"].tolist(),
                                 "made": [m.tolist() for m in e["made"]]} for e in extended]}
        criteria.append(criterion(
            "extend_attribute_error_over_baseline", c["value"], c["ci_low"], c["ci_high"], 0.5,
            c["value"] is not None and c["value"] <= 0.5,
            "hidden-attribute error of an extension vs the real next segment of its shot, / the cross-scene baseline, <= 0.5"))
    for name, want, threshold in (("async", "lt", 0.75), ("sync", "ge", 1.0)):
        pairs = probes[name]
        if not pairs:
            continue
        arr = np.array(pairs)                                                   # (n, 2): clean, noise
        c = _ci(lambda idx, arr=arr: probe_ratio(arr, idx), len(arr), seed)
        ok = c["value"] < threshold if want == "lt" else c["value"] >= threshold
        criteria.append(criterion(
            f"probe_ratio_{name}", c["value"], c["ci_low"], c["ci_high"], threshold, ok,
            f"loss of the last shot at t={PROBE_T} with the other shots clean / with them pure noise "
            f"({'< ' if want == 'lt' else '>= '}{threshold}; {'the model' if name == 'async' else 'the sync-timestep ablation'})"))

    # The two probes paired (same scenes, seeds and noise): does async training read clean
    # neighbours more than sync training does? < 1 = yes. Not a criterion; for comparison.
    probe_gap = None
    if probes["async"] and len(probes["async"]) == len(probes["sync"]):
        a, b = np.array(probes["async"]), np.array(probes["sync"])
        probe_gap = _ci(lambda idx: probe_ratio(a, idx) / probe_ratio(b, idx), len(a), seed)

    report = {
        "checkpoint": {"path": str(bundle.path), "step": bundle.info.get("step")},
        "ablation": None if ablation is None else {"path": str(ablation.path), "step": ablation.info.get("step")},
        "causal": None if causal is None else {"path": str(causal.path), "step": causal.info.get("step")},
        "data": str(dataset_dir), "heldout": keys, "heldout_rule": "n smallest sha1(scene key) (dataprep.dataset.heldout_keys)",
        "scenes": len(real), "scenes_asked": scenes, "seeds": seeds, "steps": steps, "seed": seed, "cfg": cfg,
        "frames": bundle.frames, "size": list(bundle.size), "fps": bundle.fps,
        "clip": scorer.description, "rows": table, "criteria": criteria,
        "descriptor": f"mean colour of {KEYFRAMES} keyframes (training.consistency.descriptor)",
        "joint_minus_independent_histogram": histogram_gap,
        "probe": {k: [list(p) for p in v] for k, v in probes.items()},
        "probe_async_over_sync": probe_gap,
        "extend": extend,
        "per_scene": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")   # strict JSON: other tools read it
    (out / "eval.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """eval.md: the rows (normalised consistency with its 95% CI, guard, attribute error, old metrics) and the criteria."""
    clip = report["clip"]
    clip_note = (f"CLIP {clip['model']} is RANDOM-INIT (no pretrained weights configured): no CLIP rows, "
                 "text_alignment is n/a"
                 if clip.get("random_init") else f"CLIP {clip['model']} pretrained={clip['pretrained']}")
    few = report["scenes"] < 32 or report["seeds"] < 3
    beside = []                                     # the runs evaluated beside the checkpoint
    if report.get("ablation"):
        beside.append(f"The sync_joint row and probe_ratio_sync: the synchronous-timestep ablation "
                      f"{report['ablation']['path']} (step {report['ablation']['step']}).")
    if report.get("causal"):
        beside.append(f"The autoregressive row: the context-causal fine-tune {report['causal']['path']} "
                      f"(step {report['causal']['step']}), history through its KV-cache.")
    lines = [
        f"# eval of {report['checkpoint']['path']} (step {report['checkpoint']['step']})",
        "",
        f"{report['scenes']} held-out scenes of {report['data']} ({report['heldout_rule']}), "
        f"{report['seeds']} seeds, {report['frames']} frames at {report['size'][0]}x{report['size'][1]}, "
        f"{report['fps']} fps; {report['steps']} Euler steps, cfg {report['cfg']}."
        + (" **Fewer than the 32 scenes x 3 seeds the criteria are meant for: read the intervals.**" if few else ""),
        "",
        *([" ".join(beside), ""] if beside else []),
        f"{clip_note}. Consistency = 1 - within-scene / between-scene distance of the shots' mean "
        "colours (0 = shots of a scene no closer than shots of different scenes); the guard needs "
        "the between-scene spread >= 0.5 x the real scenes'. The same score with a 4-bin colour "
        "histogram as the descriptor is beside it (\"histogram\"). The conditioned row scores only "
        "the generated shots (the given shot 0 is excluded).",
        "",
        "| row | consistency [95% CI] ↑ | spread | guard | histogram [95% CI] | attribute error (baseline) ↓ | colour-hist intersection | frame diff | s / scene |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v, f="{:.3f}"):
        return "n/a" if v is None else f.format(v)

    for name, m in report["rows"].items():
        c = m["consistency"]
        ci = f"{cell(c['value'])} [{cell(c['ci_low'])}, {cell(c['ci_high'])}]"
        h = m["consistency_histogram"]
        hci = f"{cell(h['value'])} [{cell(h['ci_low'])}, {cell(h['ci_high'])}]"
        lines.append(f"| {name} | {ci} | {cell(m['spread'])} | {'ok' if m['guard'] else 'FAIL'} | {hci} | "
                     f"{cell(m['attribute_error'])} ({cell(m['attribute_baseline'])}) | "
                     f"{cell(m['hist_consistency'])} | {cell(m['frame_diff'])} | {cell(m['seconds'], '{:.2f}')} |")
    ext = report.get("extend")
    if ext:
        lines += ["", f"Extend ({ext['scenes']} shots continued from their real first segment): hidden-attribute "
                  f"error vs the real next segment {cell(ext['attribute_error'])} (cross-scene baseline "
                  f"{cell(ext['attribute_baseline'])}; the given segment itself: {cell(ext['copy_error'])})."]
    lines += ["", "## Criteria", "", "| criterion | value [95% CI] | threshold | result |", "|---|---|---|---|"]
    for c in report["criteria"]:
        lines.append(f"| {c['name']} — {c['note']} | {cell(c['value'])} [{cell(c['ci_low'])}, {cell(c['ci_high'])}] | "
                     f"{c['threshold']} | {'PASS' if c['passed'] else 'FAIL'} |")
    if not report["criteria"]:
        lines.append("| (no criteria: needs the joint + independent / conditioned rows or the probe) | | | |")
    hg = report.get("joint_minus_independent_histogram")
    if hg:
        lines += ["", f"With the histogram descriptor, joint - independent is {cell(hg['value'])} "
                  f"[{cell(hg['ci_low'])}, {cell(hg['ci_high'])}] (not a criterion; for comparison)."]
    pg = report.get("probe_async_over_sync")
    if pg:
        lines += ["", f"probe_ratio_async / probe_ratio_sync, paired over the same scenes and noise: "
                  f"{cell(pg['value'])} [{cell(pg['ci_low'])}, {cell(pg['ci_high'])}] (< 1: the async model "
                  "gains more from clean neighbours than the sync ablation; not a criterion)."]
    return "\n".join(lines) + "\n"
