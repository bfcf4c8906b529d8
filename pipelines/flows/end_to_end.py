"""The `end_to_end` flow (`lct demo`): films -> dataset -> trained LCT -> generated scenes -> eval -> report.

    synthesize-films -> ingest (subflow) -> train (subflow, bidirectional)
                     -> train (subflow, the same with synchronous timesteps: the ablation, optional)
                     -> train (subflow, context-causal fine-tune, optional)
                     -> generate-scene x {joint, conditioned, autoregressive} -> evaluate-checkpoint
                     -> write-report (OUT/report.md + images)

The evaluation is the consistency experiment (training/evaluate.py): real, joint, conditioned,
autoregressive (the causal fine-tune, KV-cache), independent and sync_joint (the ablation) rows
over the held-out scenes with bootstrap intervals, the probe, and the pass criteria.

Layout of OUT: films/ (synthetic films, hidden appearance, unless `sources` are given), dataset/,
run/, run-sync/, run-causal/, generate/<mode>/, eval/, report.md, report/ (the images the report shows).
Re-running with the same `out` resumes: every stage whose output is complete is skipped
(films present, films already curated, runs already at their last step, generations and the
evaluation already written); the report is always rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from pipelines.flows.ingest import ingest
from pipelines.flows.train import train
from pipelines.report import write_report
from training.presets import train_preset

FAST_CURATION = {   # the demo's films are small synthetic ones: 64x64 clips are enough for 32x32 training
    "clips": {"width": 64, "height": 64, "fps": 8.0, "keyframes": 2},
    "caption": {"coca": False},
    "shards": {"max_samples": 8},
}


@flow(name="end_to_end", log_prints=True)
def end_to_end(
    out: str = "demo-out",
    sources: list[str] | None = None,
    films: int = 10,
    preset: str = "lct-demo",
    steps: int = 400,
    causal_steps: int = 60,
    ablation: bool = True,
    workers: int = 1,
    frames: int = 1,
    size: int = 16,
    eval_scenes: int = 6,
    eval_seeds: int = 2,
    eval_cfg: float | None = 1.0,
    sample_steps: int = 16,
    curation: dict[str, Any] | None = None,
    ray_address: str | None = None,
) -> dict:
    """Synthesize (or take) films, curate, train, generate, evaluate, and write OUT/report.md.

    Args:
        out: Output directory; re-running with it resumes.
        sources: Films to use instead of synthetic ones (files, folders, globs, fsspec URLs).
        films: Synthetic films to make when no sources are given.
        preset: Model preset (lct-debug for a quick check, lct-demo for the demo). The training
            config is the `demo` preset (training/presets.py) given preset, frames, size,
            eval_scenes (held out), steps and workers.
        steps: Training steps of the bidirectional model.
        causal_steps: Steps of the context-causal fine-tune (0 = skip it).
        ablation: Also train the same model with synchronous timesteps (run-sync/) and evaluate it
            beside the asynchronous one (its joint row and probe).
        workers: Ray Train workers.
        frames: Video frames per training shot.
        size: Training frame size (size x size pixels).
        eval_scenes: Held-out scenes generated and scored by the evaluation (the criteria are meant
            for >= 32; the demo's report says when it has fewer).
        eval_seeds: Seeds per generated row of the evaluation.
        eval_cfg: Guidance scale of the evaluation's and the generate stage's generations (None = the
            checkpoint's default).
            1 (off) by default: the demo's prompts name no appearance, so guidance cannot move what
            the experiment measures, and one model pass per step halves its time.
        sample_steps: Euler steps when generating.
        curation: CurateConfig fields overriding the demo's fast curation settings.
        ray_address: Ray cluster to use (default: a local Ray).
    """
    logger = get_run_logger()
    root = Path(out).resolve()
    if not sources:
        sources = [synthesize_films(str(root / "films"), films)]
    dataset = str(root / "dataset")
    ingested = ingest(sources=sources, out=dataset, config=_merge(FAST_CURATION, curation or {}), ray_address=ray_address)

    train_cfg = train_preset("demo", model_preset=preset, frames=frames, size=size, holdout=eval_scenes, steps=steps,
                             workers=workers)
    run = root / "run"
    if not finished(run, steps):
        train(data=dataset, out=str(run), config=train_cfg, ray_address=ray_address)
    else:
        logger.info("training already finished at step %d: %s", steps, run)
    sync = root / "run-sync"
    if ablation:
        if not finished(sync, steps):
            train(data=dataset, out=str(sync), config=_merge(train_cfg, {"recipe": {"timesteps": "sync"}}),
                  ray_address=ray_address)
        else:
            logger.info("the synchronous-timestep ablation already finished at step %d: %s", steps, sync)
    causal = root / "run-causal"
    if causal_steps:
        causal_cfg = _merge(train_cfg, {"schedule": {"steps": causal_steps, "checkpoint_every": causal_steps},
                                        "optim": {"warmup_steps": min(10, causal_steps // 4)}})
        if not finished(causal, causal_steps):
            train(data=dataset, out=str(causal), config=causal_cfg, attention="context_causal",
                  init_from=str(run), ray_address=ray_address)
        else:
            logger.info("the context-causal fine-tune already finished at step %d: %s", causal_steps, causal)

    scene_file = write_demo_scene(dataset, str(root / "generate"), eval_scenes, sample_steps, eval_cfg)
    generations = {}
    for mode in ("joint", "conditioned", "autoregressive"):
        checkpoint = causal if mode == "autoregressive" and causal_steps else run
        file = scene_file if mode == "conditioned" else str(Path(scene_file).with_name("scene-plain.yaml"))
        generations[mode] = generate_scene(str(checkpoint), file, str(root / "generate" / mode), mode)
    evaluation = evaluate_checkpoint(str(run), dataset, str(root / "eval"), eval_scenes, sample_steps, eval_seeds,
                                     str(sync) if ablation else None, str(causal) if causal_steps else None, eval_cfg)
    report = write_demo_report(str(root), generations, evaluation, ingested.get("dashboard"))
    logger.info("report: %s", report)
    return {"report": report, "dataset": dataset, "run": str(run), "eval": evaluation}


@task(name="synthesize-films")
def synthesize_films(directory: str, films: int) -> str:
    from dataprep.synthetic import SynthConfig, make_films

    path = Path(directory)
    if len(list(path.glob("*.mp4"))) < films:
        make_films(SynthConfig(n_films=films, seed=0, captions="hidden"), path)   # appearance only in the pixels
    return directory


@task(name="write-demo-scene")
def write_demo_scene(dataset: str, directory: str, heldout: int, steps: int, cfg: float | None = None) -> str:
    """A scene file from the first held-out scene: its prompts, and its first frame as a condition;
    generated at the evaluation's guidance scale, so the sheets show what the evaluation scored."""
    from training.demo_scene import demo_scene

    return str(demo_scene(Path(dataset), Path(directory), heldout, steps, cfg=cfg))


@task(name="generate-scene")
def generate_scene(checkpoint: str, scene_file: str, out: str, mode: str) -> dict:
    from training.generate import generate, load_scene, plan_scene, write_outputs
    from model.export import load_bundle

    record = Path(out) / "generation.json"
    if record.is_file():
        return json.loads(record.read_text())
    bundle = load_bundle(checkpoint)
    plan = plan_scene(load_scene(scene_file), bundle, mode=mode)
    write_outputs(generate(bundle, plan), bundle, out)
    return json.loads(record.read_text())


@task(name="evaluate-checkpoint")
def evaluate_checkpoint(checkpoint: str, dataset: str, out: str, scenes: int, steps: int, seeds: int = 2,
                        ablation: str | None = None, causal: str | None = None, cfg: float | None = None) -> dict:
    """The consistency experiment on the held-out scenes; `ablation` (sync timesteps) and `causal`
    (the context-causal fine-tune, for the autoregressive row) are runs beside `checkpoint`."""
    from training.evaluate import evaluate
    from model.export import load_bundle

    result = Path(out) / "eval.json"
    if result.is_file():
        return json.loads(result.read_text())
    logger = get_run_logger()

    def progress(what: str, done: int, total: int) -> None:     # about every 10% in the flow's log
        if done == total or done % max(1, total // 10) == 0:
            logger.info("evaluation %d/%d: %s", done, total, what)

    return evaluate(load_bundle(checkpoint), dataset, out, scenes=scenes, steps=steps, seeds=seeds, cfg=cfg,
                    ablation=load_bundle(ablation) if ablation else None,
                    causal=load_bundle(causal) if causal else None, on_progress=progress)


@task(name="write-report")
def write_demo_report(root: str, generations: dict, evaluation: dict, dashboard: str | None) -> str:
    return str(write_report(Path(root), generations, evaluation, dashboard=dashboard or _dashboard(),
                            prefect_ui=_prefect_ui()))


# -- plain functions ------------------------------------------------------------------------
def finished(run: Path, steps: int) -> bool:
    """The run's export is at its last step (nothing left to train)."""
    info = run / "export" / "lct.json"
    return info.is_file() and json.loads(info.read_text()).get("step", 0) >= steps


def _merge(base: dict, extra: dict) -> dict:
    merged = json.loads(json.dumps(base))
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _dashboard() -> str | None:
    try:
        import ray

        return ray._private.worker.get_dashboard_url() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - the report just says n/a
        return None


def _prefect_ui() -> str | None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    return PREFECT_UI_URL.value() or PREFECT_API_URL.value()

