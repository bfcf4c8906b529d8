"""The `lct` command line. Orchestration only: every command calls into dataprep/, training/,
model/ or pipelines/flows/ (curate, inspect, synth, train, generate, eval, demo, flows serve).
Exit codes: 0 ok, 1 the job failed, 2 bad usage or configuration (nothing was done).
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pipelines.runlog import logged, terminal_level

app = typer.Typer(
    help="lct: curate films into multi-shot scenes and train Long Context Tuning video models.",
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = logging.getLogger("lct")  # what the terminal shows as progress also goes to the run's log file (runlog.py)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lct {version('lct')}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the installed lct version and exit."),
) -> None:
    if ctx.invoked_subcommand is None:  # `lct` alone: the help, and that is not an error
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    )


def _load_config(cls: type[BaseModel], path: Optional[Path], overrides: dict) -> BaseModel:
    """YAML file (optional) + CLI overrides (dotted keys), validated together (a file may rely on a flag:
    `model.lora_rank` in the file with `--pretrained DIR`); exits 2 with the errors."""
    from dataprep.config import explain, read_yaml, set_dotted

    try:
        data = {}
        if path:
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            data = read_yaml(path) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        for dotted, value in overrides.items():            # a flag's section must be a mapping in the file
            section = dotted.split(".")[0]
            if value is not None and "." in dotted and not isinstance(data.get(section, {}), dict):
                raise ValueError(f"{path}: key {section} must be a mapping (of {cls.__name__} fields), "
                                 f"got {data[section]!r}")
        return cls.model_validate(set_dotted(data, overrides))
    except ValidationError as e:
        console.print(f"[red]invalid configuration[/red] ({path or 'defaults + flags'}):\n{explain(e, cls)}", markup=False)
        raise typer.Exit(2)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]invalid configuration[/red] ({path or 'defaults + flags'}):\n{e}")
        raise typer.Exit(2)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder for the films (+ .truth.json, .captions.json)."),
    films: Optional[int] = typer.Option(None, "--films", help="Number of films (default from config: 6)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; same seed, same films."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with SynthConfig fields."),
    hidden: Optional[bool] = typer.Option(None, "--hidden/--full", help="hidden: appearance never in captions (IDs, framing, action only; in the truth JSON); full: captions name everything (default)."),
):
    """Make synthetic films with ground truth (shots, scenes) and sidecar captions."""
    from dataprep.synthetic import SynthConfig, make_films

    cfg = _load_config(SynthConfig, config, {"n_films": films, "seed": seed,
                                             "captions": None if hidden is None else ("hidden" if hidden else "full")})
    with _progress() as bar:
        task = bar.add_task("synthesizing films", total=cfg.n_films, note="")
        paths = make_films(cfg, out, progress=lambda done, total: bar.update(task, completed=done))
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    console.print(f"wrote {len(paths)} films to {out}")


@app.command()
@logged("curate")
def curate(
    inputs: list[str] = typer.Argument(..., help="Video files, folders, globs or fsspec URLs (s3://, gs://)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory (re-running resumes)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with CurateConfig fields."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)."
    ),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray (default: all)."),
    max_failure_rate: Optional[float] = typer.Option(
        None, "--max-failure-rate", help="Fail when more than this share of films failed (0-1)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does."),
):
    """Curate films into WebDataset scene shards + a Parquet manifest (on Ray)."""
    from dataprep.cluster import RayAuthError
    from dataprep.config import CurateConfig
    from dataprep.lock import OutputError
    from dataprep.run import CurateFailed, CurateUsageError, curate as run_curate
    from dataprep.sources import SourceError, absolute

    terminal_level(logging.INFO if verbose else logging.WARNING)
    cfg = _load_config(
        CurateConfig,
        config,
        {"ray.address": ray_address, "ray.num_cpus": num_cpus, "max_failure_rate": max_failure_rate},
    ).with_absolute_paths()
    # Ray workers run in other folders: every user path becomes absolute here, at the boundary
    inputs, out = [absolute(i) for i in inputs], out.resolve()
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    try:
        with _progress() as bar:
            task = bar.add_task("curating films", total=None, note="starting Ray")

            def on_film(outcome, done, total):
                counts[outcome.status] += 1
                log.info("film %d/%s %s %s%s", done, total, outcome.status, outcome.uri,
                         f": {outcome.reason}" if outcome.status == "failed" else "")
                bar.update(task, completed=done, total=total, note=f"ok {counts['ok']}  failed {counts['failed']}")
                if outcome.status == "failed":
                    bar.console.print(f"[yellow]failed[/yellow] {outcome.uri}: {outcome.reason}")

            summary = run_curate(inputs, out, cfg, on_film=on_film, on_status=_also_logged(bar.console.print))
    except (FileNotFoundError, CurateUsageError, SourceError, OutputError, RayAuthError) as e:
        # inputs that match nothing or cannot be listed, resources the cluster lacks, an --out in use or
        # unwritable, or one that takes no more bytes (disk full mid-run), a cluster refusing our token
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    except CurateFailed as e:
        console.print(f"[red]curation failed:[/red] {e}")
        _print_dataset(out)
        raise typer.Exit(1)
    _print_dataset(out)
    log.info("done in %.1f s -> %s", summary.wall_s, out)
    console.print(f"done in {summary.wall_s:.1f} s -> {out}")


def _also_logged(show):
    """on_status for the progress bar: shown on the terminal and written to the run's log."""

    def status(message: str) -> None:
        log.info("%s", message)
        show(message)

    return status


def _print_dataset(out: Path) -> None:
    from dataprep.dataset import failures, load_summary

    summary = load_summary(out)
    table = Table(title=f"dataset {out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    c = summary["counts"]
    for name, value in [
        ("films ok", c["films"]["ok"]),
        ("films failed", c["films"]["failed"]),
        ("films skipped", c["films"]["skipped"]),
        ("shots in scenes", c["shots"]),
        ("shots dropped", c["shots_dropped"]),
        ("scenes", c["scenes"]),
        ("scenes without captions", c.get("scenes_uncaptioned", "n/a")),
        ("shards", c["shards"]),
    ]:
        table.add_row(name, str(value))
    captions = summary.get("captions") or {}
    if captions.get("scenes"):
        table.add_row("this run: scenes captioned", str(captions["captioned"]))
        table.add_row("this run: caption failed", f"{captions['failed']} ({captions['failure_rate']:.0%}, "
                      f"limit {captions['max_caption_failure_rate']:.0%})")
        table.add_row("this run: no captioner configured", str(captions["no_captioner"]))
    console.print(table)
    if captions.get("no_captioner"):
        console.print(f"[yellow]{captions['no_captioner']} scenes have NO captions: no sidecar, no VLM endpoint "
                      "(caption.vlm) and no CoCa weights (caption.coca_pretrained) are configured; they are written "
                      "with caption_source none, and `lct train` warns when it trains on them[/yellow]")
    if summary["embed"].get("random_init"):
        console.print("[yellow]CLIP embeddings are from a RANDOM-INIT model (no pretrained weights configured)[/yellow]")
    bad = failures(out)
    if bad:
        t = Table(title="films not curated")
        t.add_column("status")
        t.add_column("film")
        t.add_column("reason")
        for row in bad:
            t.add_row(row["status"], row["uri"], row["error"] or "")
        console.print(t)


@app.command()
def inspect(
    directory: Path = typer.Argument(..., help="A dataset directory written by `lct curate`."),
    sheets: int = typer.Option(50, "--sheets", help="Contact sheets to draw at most (0 = none)."),
):
    """Summarise a curated dataset, verify its shards, and draw a contact sheet per scene (DIR/inspect/*.png).
    Exits 1 when a shard is damaged or the manifest and the shards disagree (each problem is listed)."""
    from dataprep.dataset import check_dataset
    from dataprep.sheets import write_sheets

    try:
        _print_dataset(directory)
    except FileNotFoundError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    problems = check_dataset(directory).problems
    for problem in problems:
        console.print(f"[red]damaged:[/red] {problem}")
    damaged: list[str] = []
    if sheets:
        with _progress() as bar:
            task = bar.add_task("contact sheets", total=None, note="")
            paths = write_sheets(directory, sheets, progress=lambda n: bar.update(task, completed=n), damaged=damaged)
        console.print(f"{len(paths)} contact sheets in {directory / 'inspect'}")
        for problem in damaged:
            console.print(f"[red]skipped unreadable shard data:[/red] {problem}")
    if problems or damaged:
        console.print(f"[red]{directory} is damaged[/red]: run `lct curate` with the same --out to curate the films "
                      "of damaged shards again")
        raise typer.Exit(1)


@app.command()
@logged("demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output directory (re-running resumes finished stages)."),
    films: int = typer.Option(10, "--films", help="Synthetic films to make (hidden appearance: never in a caption)."),
    preset: str = typer.Option("lct-demo", "--preset", help="Model preset (lct-debug = a quick check)."),
    steps: int = typer.Option(400, "--steps", help="Training steps of the bidirectional model (and of the ablation)."),
    causal_steps: int = typer.Option(60, "--causal-steps", help="Context-causal fine-tune steps (0 = skip)."),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="Also train and evaluate the synchronous-timestep ablation."),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers (the 2 cores go to their threads)."),
    eval_scenes: int = typer.Option(6, "--eval-scenes", help="Held-out scenes to generate and score."),
    eval_seeds: int = typer.Option(2, "--eval-seeds", min=1, help="Seeds per generated row of the evaluation."),
    sample_steps: int = typer.Option(16, "--sample-steps", help="Euler steps when generating."),
    frames: int = typer.Option(1, "--frames", help="Video frames per training shot."),
    size: int = typer.Option(16, "--size", help="Training frame size (pixels, square)."),
):
    """The main job, end to end as the Prefect flow `end_to_end`: synthesize films, curate them on
    local Ray, train LCT with DeepSpeed on Ray Train, generate in each mode, evaluate, and write
    OUT/report.md."""
    from pipelines.flows.end_to_end import end_to_end

    state = end_to_end(
        out=str(out), films=films, preset=preset, steps=steps, causal_steps=causal_steps, ablation=ablation,
        workers=workers, eval_scenes=eval_scenes, eval_seeds=eval_seeds, sample_steps=sample_steps, frames=frames,
        size=size, return_state=True,
    )
    if not state.is_completed():
        console.print(f"[red]demo failed:[/red] {state.message}  (re-run the same command to resume)")
        raise typer.Exit(1)
    result = state.result()
    console.print(f"[green]done[/green]: open {result['report']}")


@app.command()
@logged("train")
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Curated dataset dir (the --out of `lct curate`)."),
    out: Path = typer.Option(..., "--out", help="Run dir: config, checkpoints, metrics, samples, export (re-running resumes)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset (lct-debug, lct-small, lct-3b)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with TrainConfig fields."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Training workers (Ray Train)."),
    zero: Optional[int] = typer.Option(None, "--zero", help="ZeRO stage 1, 2 or 3."),
    sp: Optional[int] = typer.Option(None, "--sp", help="Sequence parallel degree P (Ulysses): each scene split over P workers; P divides --workers and the heads."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps of the run (the LR schedule spans them)."),
    until: Optional[int] = typer.Option(None, "--until", help="Stop with a checkpoint at this step (resume later)."),
    attention: Optional[str] = typer.Option(None, "--attention", help="bidirectional or context_causal."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from the weights of this run or export."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Tune this local diffusers Wan folder (backbone wan; architecture, VAE and umT5 from it)."),
    gpus: Optional[int] = typer.Option(None, "--gpus-per-worker", help="1 = CUDA + NCCL (bf16), 0 = CPU + gloo (fp32)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: RAY_ADDRESS, else local)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and write RUN/config.yaml + deepspeed.json, do not train."),
    export_only: bool = typer.Option(False, "--export-only", help="Write RUN/export from the latest checkpoint, no training."),
):
    """Train the LCT model with DeepSpeed ZeRO on Ray Train workers (checkpoints, resume, export)."""
    from dataprep.cluster import RayAuthError
    from dataprep.lock import OutputError
    from training.config import TrainConfig
    from training.launch import TrainUsageError, check, launch, prepare_run

    # Ray workers run in other folders: every user path becomes absolute here, at the boundary
    out, data, init_from = out.resolve(), data.resolve() if data else None, init_from.resolve() if init_from else None
    if config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"            # resuming: the run's own config, flags override it
    cfg = _load_config(TrainConfig, config, {
        "data.dataset": str(data) if data else None, "model.preset": preset, "engine.workers": workers,
        "engine.zero_stage": zero, "engine.sequence_parallel": sp, "schedule.steps": steps, "model.attention": attention,
        "model.init_from": str(init_from) if init_from else None, "engine.gpus_per_worker": gpus,
        "model.pretrained": str(pretrained.resolve()) if pretrained else None,
        "engine.precision": precision,
        "engine.ray_address": ray_address,
    })
    try:
        if dry_run:
            if warning := prepare_run(cfg, out):
                console.print(f"[yellow]WARNING: {warning}[/yellow]")
            console.print(f"checked; wrote {out / 'config.yaml'} and {out / 'deepspeed.json'}")
            return
        check(cfg, out)
        if export_only:
            if not any((out / "checkpoints").glob("step-*/state.json")):
                raise TrainUsageError(f"{out} has no checkpoint to export")
            until = -1
        with _progress() as bar:
            task = bar.add_task("training", total=cfg.schedule.steps, note="starting Ray workers")

            def on_metrics(m: dict) -> None:
                note = f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['samples_per_s']:.1f} scenes/s  data wait {m['data_wait']:.0%}"
                log.info("step %d/%d %s", m["step"], cfg.schedule.steps, note)
                bar.update(task, completed=m["step"], note=note)

            result = launch(cfg, out, until=until, on_metrics=on_metrics, on_status=_also_logged(bar.console.print))
    except (TrainUsageError, OutputError, RayAuthError) as e:  # OutputError: RUN is written by another run, or unwritable
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    except RuntimeError as e:
        console.print(f"[red]training failed:[/red] {e}")
        raise typer.Exit(1)
    loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    log.info("step %s, loss %s, %.0f s; export: %s", result.step, loss, result.wall_s, result.export)
    console.print(f"step {result.step}, loss {loss}, {result.wall_s:.0f} s; export: {result.export}; "
                  f"TensorBoard: tensorboard --logdir {out / 'tb'}")


def _load_bundle(checkpoint: Path, device: str):
    """model.export.load_bundle; exits 2 on a missing checkpoint or an unavailable device."""
    import torch

    from model.export import load_bundle

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        console.print(f"[red]error:[/red] --device must be cpu or cuda, got {device!r}")
        raise typer.Exit(2)
    if device.startswith("cuda") and not torch.cuda.is_available():
        console.print(f"[red]error:[/red] --device {device} but torch sees no CUDA device; use --device cpu")
        raise typer.Exit(2)
    try:
        return load_bundle(checkpoint, device)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] cannot load the checkpoint: {e}")
        raise typer.Exit(2)


class _StepBars:
    """on_step(label, done, total) -> one rich task per label (a shot, or the whole scene)."""

    def __init__(self, bar: Progress):
        self.bar, self.tasks = bar, {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total, note="")
        self.bar.update(self.tasks[label], completed=done)


@app.command()
@logged("generate")
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A training run dir (uses RUN/export) or an export dir."),
    scene: Path = typer.Option(
        ..., "--scene", help="Scene YAML: global, shots [{prompt, frames?, condition?}], seed, steps, cfg (see examples/scene.yaml)."
    ),
    out: Path = typer.Option(..., "--out", help="Output dir: shot-000.mp4 ..., scene.mp4, sheet.png, generation.json."),
    mode: Optional[str] = typer.Option(
        None, "--mode",
        help="joint | conditioned | autoregressive | extend (default: conditioned when the scene has a condition, else joint).",
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu or cuda."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Euler steps (overrides the scene file)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (overrides the scene file); same seed, same latents."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (overrides the scene file; 1 = off)."),
    negative_prompt: Optional[str] = typer.Option(
        None, "--negative-prompt",
        help="Prompt of guidance's unconditional branch, for every shot and the global prompt (overrides the scene "
             "file's `negative`; default: the null prompt, or \"\" for a Wan checkpoint as diffusers does).",
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="autoregressive / extend: recompute the history at every step instead of a KV-cache."
    ),
):
    """Generate a multi-shot scene from a scene file with a trained LCT checkpoint."""
    from training.generate import MODES, SceneError, generate as run_generate, load_scene, plan_scene, write_outputs

    checkpoint, scene, out = checkpoint.resolve(), scene.resolve(), out.resolve()   # recorded in generation.json
    if mode is not None and mode not in MODES:   # the option is wrong, not the scene file
        console.print(f"[red]error:[/red] --mode {mode!r} is not a mode; choose one of {', '.join(MODES)}")
        raise typer.Exit(2)
    bundle = _load_bundle(checkpoint, device)
    try:
        plan = plan_scene(load_scene(scene), bundle, mode, steps=steps, seed=seed, cfg=cfg, negative=negative_prompt)
    except SceneError as e:
        console.print(f"[red]invalid scene[/red] {scene}: {e}")
        raise typer.Exit(2)
    console.print(f"{plan.mode}: {len(plan.shapes)} shots, {plan.sampler.steps} steps, seed {plan.sampler.seed}, "
                  f"checkpoint step {bundle.info.get('step')} ({bundle.model.cfg.attention})")
    try:
        with _progress() as bar:
            result = run_generate(bundle, plan, on_step=_StepBars(bar), use_cache=not no_cache)
        written = write_outputs(result, bundle, out)
    except (RuntimeError, ValueError, OSError) as e:
        console.print(f"[red]generation failed:[/red] {e}")
        raise typer.Exit(1)
    console.print(f"{len(written)} files in {out} ({result.record['seconds']:.1f} s): "
                  + ", ".join(p.name for p in written))


@app.command("eval")
@logged("eval")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A training run dir (uses RUN/export) or an export dir."),
    data: Path = typer.Option(..., "--data", help="A curated dataset dir (`lct curate`); scenes are held out by dataprep.dataset.heldout_keys."),
    out: Path = typer.Option(..., "--out", help="Output dir for eval.json and eval.md."),
    scenes: int = typer.Option(32, "--scenes", min=1, help="Held-out scenes scored (the criteria are meant for >= 32); keep N <= the run's data.holdout so none was trained on."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per generated row (consistency = mean over seeds)."),
    ablation: Optional[Path] = typer.Option(None, "--ablation", help="The same model trained with recipe.timesteps=sync: adds its joint row and probe."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="The sampling-free probe (loss of a shot with the others clean vs noise)."),
    causal: Optional[Path] = typer.Option(None, "--causal", help="The context-causal fine-tune of the checkpoint: generates the autoregressive row (KV-cache)."),
    modes: list[str] = typer.Option(
        ["joint", "autoregressive", "conditioned", "independent", "extend"], "--modes",
        help="Rows to generate (repeat the option): joint, autoregressive, conditioned, independent, extend "
             "(a shot's next segment from its real first one). 'real' is always scored.",
    ),
    steps: int = typer.Option(30, "--steps", min=1, help="Euler steps per generation."),
    seed: int = typer.Option(0, "--seed", help="Seed of every generation."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (1 = off; default: on if the checkpoint was trained with prompt dropout)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu or cuda."),
):
    """Generate held-out scenes in every mode and score consistency, text alignment and smoothness vs the real ones."""
    from training.evaluate import MODES, evaluate

    checkpoint, data, out = checkpoint.resolve(), data.resolve(), out.resolve()       # recorded in eval.json
    ablation = ablation.resolve() if ablation else None
    causal = causal.resolve() if causal else None
    bad = [m for m in modes if m not in MODES]
    if bad:
        console.print(f"[red]error:[/red] unknown --modes {bad}; choose from {list(MODES)}")
        raise typer.Exit(2)
    if not (data / "dataset.json").is_file() or not any((data / "shards").glob("*.tar")):
        console.print(f"[red]error:[/red] {data} is not a curated dataset (expected dataset.json and shards/*.tar; run `lct curate`)")
        raise typer.Exit(2)
    bundle = _load_bundle(checkpoint, device)
    try:
        with _progress() as bar:
            task = bar.add_task("held-out scenes x rows", total=None, note="")
            report = evaluate(
                bundle, data, out, scenes=scenes, modes=tuple(modes), steps=steps, seed=seed, cfg=cfg, seeds=seeds,
                ablation=_load_bundle(ablation, device) if ablation else None, probe=probe,
                causal=_load_bundle(causal, device) if causal else None,
                on_progress=lambda what, done, total: bar.update(task, completed=done, total=total, note=what),
            )
    except (RuntimeError, ValueError, OSError) as e:
        console.print(f"[red]evaluation failed:[/red] {e}")
        raise typer.Exit(1)
    table = Table(title=f"eval of {report['scenes']} held-out scenes x {report['seeds']} seeds ({report['steps']} steps)")
    for col in ("row", "consistency", "95% CI", "guard", "attr. err", "baseline", "hist consist.", "frame diff", "s/scene"):
        table.add_column(col, justify="left" if col == "row" else "right")

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    for name, m in report["rows"].items():
        c = m["consistency"]
        table.add_row(name, fmt(c["value"]), f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]", "ok" if m["guard"] else "FAIL",
                      fmt(m["attribute_error"]), fmt(m["attribute_baseline"]), fmt(m["hist_consistency"]),
                      fmt(m["frame_diff"]), fmt(m["seconds"]))
    console.print(table)
    for c in report["criteria"]:
        console.print(f"{'[green]PASS[/green]' if c['passed'] else '[red]FAIL[/red]'} {c['name']}: {fmt(c['value'])} "
                      f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}] (threshold {c['threshold']})")
    if report["clip"].get("random_init"):
        console.print("[yellow]CLIP is RANDOM-INIT (no pretrained weights configured): CLIP numbers are low-level only[/yellow]")
    console.print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")


flows_app = typer.Typer(help="Prefect flows: deployments, schedules and serving.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")


@flows_app.command("serve")
def flows_serve(
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file with ServeConfig fields (schedules, parameters); see pipelines/serve.py."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build and print the deployments; register and run nothing."),
):
    """Register the Prefect deployments (ingest on its cron schedule, train on demand) and serve them."""
    from prefect.exceptions import ParameterTypeError

    from pipelines import serve as serving

    cfg = _load_config(serving.ServeConfig, config, {})
    try:
        deployments = serving.build_deployments(cfg)
    except (ParameterTypeError, ValueError) as e:
        console.print(f"[red]invalid deployment[/red] ({config or 'defaults'}): {e}")
        raise typer.Exit(2)
    table = Table(title="Prefect deployments" + (" (dry run: nothing registered)" if dry_run else ""))
    for col in ("deployment", "schedule", "entrypoint", "parameters"):
        table.add_column(col)
    for row in serving.describe(deployments):
        table.add_row(row["deployment"], row["schedule"], row["entrypoint"], json.dumps(row["parameters"]))
    console.print(table)
    if not dry_run:
        serving.serve(deployments, cfg.limit)


config_app = typer.Typer(help="The configuration of curate, train and generate.")
app.add_typer(config_app, name="config")


@config_app.callback(invoke_without_command=True)
def _config_main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


class _ConfigKind(str, Enum):
    curate = "curate"
    train = "train"
    generate = "generate"


EXAMPLE_SCENE = {
    "global": "Character 1: a red disc with white stripes. Environment: a blue room. Story: Character 1 finds a square.",
    "shots": [{"prompt": "[SHOT CUT] Character 1 slides to the left, close-up"},
              {"prompt": "[SHOT CUT] the yellow square on the floor", "condition": {"image": "ref.png", "t": 0.0}}],
}


@config_app.command("show")
def config_show(
    kind: _ConfigKind = typer.Argument(..., help="curate (--config of lct curate), train (lct train), generate (the --scene file)."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="train only: a named training config (debug, demo, production; training/presets.py) "
        "instead of the defaults. Not a model preset: that is model.preset inside it."),
):
    """Print every default as YAML, each key with its description (a starting point for --config)."""
    from pipelines.config_doc import commented_yaml

    if preset is not None and kind is not _ConfigKind.train:
        console.print(f"[red]error:[/red] --preset is for `lct config show train`; {kind.value} has no presets")
        raise typer.Exit(2)
    if preset is not None:
        from training.config import TrainConfig
        from training.presets import train_preset

        try:
            config = TrainConfig.model_validate(train_preset(preset))
        except ValueError as e:
            console.print(f"[red]error:[/red] --preset: {e}")
            raise typer.Exit(2)
        header = f"# TrainConfig, training preset {preset}: lct train --config FILE (unknown keys are errors)"
    elif kind is _ConfigKind.curate:
        from dataprep.config import CurateConfig

        header, config = "# CurateConfig: lct curate --config FILE (unknown keys are errors)", CurateConfig()
    elif kind is _ConfigKind.train:
        from training.config import TrainConfig

        header, config = "# TrainConfig: lct train --config FILE (unknown keys are errors)", TrainConfig()
    else:
        from training.generate import SceneSpec

        header = "# A scene file: lct generate --scene FILE (global and shots are yours; the rest are defaults)"
        config = SceneSpec.model_validate(EXAMPLE_SCENE)
    typer.echo(header + "\n" + commented_yaml(config), nl=False)


if __name__ == "__main__":
    app()
