"""The `lct` command line. Orchestration only: every command calls into dataprep/ (and,
in later issues, training/ and pipelines/flows). Exit codes: 0 ok, 1 the job failed,
2 bad usage or configuration (nothing was done).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    help="lct: curate films into multi-shot scenes and train Long Context Tuning video models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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
    """YAML file (optional) + CLI overrides (dotted keys), validated; exits 2 with the errors."""
    from dataprep.config import load_yaml

    try:
        data = load_yaml(cls, path).model_dump() if path else {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return cls.model_validate(data)
    except (ValidationError, ValueError, FileNotFoundError) as e:
        console.print(f"[red]invalid configuration[/red] ({path or 'defaults + flags'}):\n{e}")
        raise typer.Exit(2)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder for the films (+ .truth.json, .captions.json)."),
    films: Optional[int] = typer.Option(None, "--films", help="Number of films (default from config: 6)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; same seed, same films."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with SynthConfig fields."),
):
    """Make synthetic films with ground truth (shots, scenes) and sidecar captions."""
    from dataprep.synthetic import SynthConfig, make_films

    cfg = _load_config(SynthConfig, config, {"n_films": films, "seed": seed})
    with _progress() as bar:
        task = bar.add_task("synthesizing films", total=cfg.n_films, note="")
        paths = make_films(cfg, out, progress=lambda done, total: bar.update(task, completed=done))
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    console.print(f"wrote {len(paths)} films to {out}")


@app.command()
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
    from dataprep.config import CurateConfig
    from dataprep.run import CurateFailed, CurateUsageError, curate as run_curate

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _load_config(
        CurateConfig,
        config,
        {"ray.address": ray_address, "ray.num_cpus": num_cpus, "max_failure_rate": max_failure_rate},
    )
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    try:
        with _progress() as bar:
            task = bar.add_task("curating films", total=None, note="starting Ray")

            def on_film(outcome, done, total):
                counts[outcome.status] += 1
                bar.update(task, completed=done, total=total, note=f"ok {counts['ok']}  failed {counts['failed']}")
                if outcome.status == "failed":
                    bar.console.print(f"[yellow]failed[/yellow] {outcome.uri}: {outcome.reason}")

            summary = run_curate(inputs, out, cfg, on_film=on_film, on_status=bar.console.print)
    except (FileNotFoundError, CurateUsageError) as e:  # inputs that match nothing, resources the cluster lacks
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    except CurateFailed as e:
        console.print(f"[red]curation failed:[/red] {e}")
        _print_dataset(out)
        raise typer.Exit(1)
    _print_dataset(out)
    console.print(f"done in {summary.wall_s:.1f} s -> {out}")


def _print_dataset(out: Path) -> None:
    from dataprep.sheets import failures, load_summary

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
        ("shards", c["shards"]),
    ]:
        table.add_row(name, str(value))
    console.print(table)
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
    """Summarise a curated dataset and draw a contact sheet per scene (DIR/inspect/*.png)."""
    from dataprep.sheets import write_sheets

    try:
        _print_dataset(directory)
    except FileNotFoundError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if sheets:
        with _progress() as bar:
            task = bar.add_task("contact sheets", total=None, note="")
            paths = write_sheets(directory, sheets, progress=lambda n: bar.update(task, completed=n))
        console.print(f"{len(paths)} contact sheets in {directory / 'inspect'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output directory (re-running resumes)."),
    films: int = typer.Option(6, "--films", help="Synthetic films to make."),
):
    """The main job on the embedded default: synthesize films, curate them on local Ray, inspect."""
    films_dir, data_dir = out / "films", out / "dataset"
    if not any(films_dir.glob("*.mp4")):
        synth(out=films_dir, films=films, seed=0, config=None)
    curate(
        inputs=[str(films_dir)], out=data_dir, config=None, ray_address=None, num_cpus=None,
        max_failure_rate=None, verbose=False,
    )
    from dataprep.sheets import write_sheets

    sheets = write_sheets(data_dir, 50)
    console.print(f"{len(sheets)} contact sheets in {data_dir / 'inspect'}  (open them, or run `lct inspect {data_dir}`)")


if __name__ == "__main__":
    app()
