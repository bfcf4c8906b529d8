"""The `train` flow: a curated dataset -> an LCT run (checkpoints, metrics, samples, export).

    check-training-config -> train-in-process (Ray Train from this process) | train-on-ray-job
                          -> publish-training-report (matplotlib charts + markdown artifact `train-<run>-<hash>`)

`ray_address` decides where the Ray Train driver runs: None = a local Ray in this process;
ray://head:10001 or auto = this process joins the cluster; http://head:8265 = a Ray job running
`lct train --data ... --out ... --config train.yaml --ray-address auto` on the cluster (the
run dir must be on storage both sides see). Metrics are relayed into the flow run's log while
training runs. Re-running with the same `run_dir` resumes from its latest checkpoint.
Training itself is never retried by Prefect: Ray Train restarts failed workers from checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import ValidationError
from prefect.artifacts import create_markdown_artifact

from dataprep.config import explain, set_dotted
from dataprep.sources import absolute
from pipelines.flows.common import is_jobs_address, run_ray_job
from pipelines.plot import training_charts
from training.config import TrainConfig, dump_yaml
from training.launch import TrainUsageError, launch, prepare_run
from training.metrics import read_metrics



@flow(name="train", log_prints=True)
def train(
    data: str,
    out: str,
    config: str | dict[str, Any] | None = None,
    preset: str | None = None,
    workers: int | None = None,
    zero_stage: int | None = None,
    gpus_per_worker: int | None = None,
    precision: str | None = None,
    steps: int | None = None,
    until: int | None = None,
    attention: str | None = None,
    init_from: str | None = None,
    ray_address: str | None = None,
) -> dict:
    """Train (or resume) an LCT run on a dataset curated by `ingest`.

    Args:
        data: Curated dataset dir (the `out` of the ingest flow).
        out: Run dir; re-running with it resumes from the latest checkpoint.
        config: A TrainConfig YAML file, or a dict of TrainConfig fields.
        preset: Model preset (lct-debug, lct-small, lct-3b).
        workers: Ray Train workers.
        zero_stage: DeepSpeed ZeRO stage 1, 2 or 3.
        gpus_per_worker: 1 = each worker trains on a CUDA device (NCCL), 0 = CPU (gloo).
        precision: auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32.
        steps: Total optimizer steps of the run.
        until: Stop with a checkpoint at this step (resume later).
        attention: bidirectional or context_causal (fine-tune with init_from).
        init_from: Start from the weights of this run or export.
        ray_address: None = local Ray; ray://host:10001 or auto = join; http://host:8265 = Ray job.
    """
    # the paths a user gives, absolute (the flow runner's cwd): Ray Train workers and Ray jobs run elsewhere
    data, out = absolute(data), absolute(out)
    config = absolute(config) if isinstance(config, str) else config
    init_from = absolute(init_from) if init_from else None
    params = dict(preset=preset, workers=workers, zero_stage=zero_stage, gpus_per_worker=gpus_per_worker,
                  precision=precision, steps=steps, attention=attention, init_from=init_from)
    cfg = check_training_config(data, out, config, config_overrides(params))
    if is_jobs_address(ray_address):
        result = train_on_ray_job(cfg, out, until, ray_address)
    else:
        result = train_in_process(cfg, out, until, ray_address)
    return publish_training_report(out, result)


@task(name="check-training-config")
def check_training_config(dataset: str, run_dir: str, config: str | dict | None, overrides: dict) -> TrainConfig:
    """Validate the config and the dataset; write RUN/config.yaml + deepspeed.json (nothing trains)."""
    cfg = effective_config(dataset, config, overrides)
    prepare_run(cfg, Path(run_dir))
    return cfg


@task(name="train-in-process")
def train_in_process(cfg: TrainConfig, run_dir: str, until: int | None, ray_address: str | None) -> dict:
    logger = get_run_logger()
    if ray_address:
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"ray_address": ray_address})})

    def relay(m: dict) -> None:
        if m["step"] % max(1, cfg.schedule.steps // 20) == 0 or m["step"] == cfg.schedule.steps:
            logger.info("step %d/%d loss %.4f lr %.2e %.1f scenes/s data wait %.0f%%", m["step"],
                        cfg.schedule.steps, m["loss"], m["lr"], m["samples_per_s"], 100 * m["data_wait"])

    result = launch(cfg, run_dir, until=until, on_metrics=relay, on_status=logger.info)
    return {"step": result.step, "loss": result.loss, "wall_s": result.wall_s,
            "export": str(result.export) if result.export else None, "where": "in-process"}


@task(name="train-on-ray-job")
def train_on_ray_job(cfg: TrainConfig, run_dir: str, until: int | None, dashboard: str) -> dict:
    logger = get_run_logger()
    entry = ["lct", "train", "--data", cfg.data.dataset, "--out", run_dir, "--config", "train.yaml",
             "--ray-address", "auto"] + (["--until", str(until)] if until else [])
    job = run_ray_job(dashboard, shlex.join(entry), files={"train.yaml": dump_yaml(cfg)}, log=logger.info)
    if not job.ok:
        raise RuntimeError(f"Ray job {job.job_id} {job.status} (exit code {job.exit_code}): {job.message}")
    metrics = read_metrics(Path(run_dir))
    last = metrics[-1] if metrics else {}
    export = Path(run_dir) / "export"
    return {"step": last.get("step"), "loss": last.get("loss"), "wall_s": None, "job_id": job.job_id,
            "export": str(export) if export.is_dir() else None, "where": f"Ray job on {dashboard}"}


@task(name="publish-training-report")
def publish_training_report(run_dir: str, result: dict) -> dict:
    run = Path(run_dir)
    charts = training_charts(read_metrics(run), run, title=run.name)
    chart = charts.get("loss")
    markdown = summary_markdown(run, result, chart)
    images = [("loss curve", charts["loss"]), ("training curves", charts["training"])] if charts else []
    (run / "report.md").write_text(markdown + "".join(f"\n![{alt}]({p.name})\n" for alt, p in images))
    inline = "".join(f"\n![{alt}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})\n"
                     for alt, p in images)
    key = summary_key(run)
    create_markdown_artifact(markdown=markdown + inline, key=key, description=f"training run {run}")
    return result | {"loss_chart": str(chart) if chart else None, "report": str(run / "report.md"),
                     "artifact_key": key}


# -- plain functions (usable without Prefect) -------------------------------------------------
# flow parameter -> the TrainConfig field it sets (None = keep the config's value)
PARAMETER_KEYS = {
    "preset": "model.preset", "workers": "engine.workers", "zero_stage": "engine.zero_stage",
    "gpus_per_worker": "engine.gpus_per_worker", "precision": "engine.precision", "steps": "schedule.steps",
    "attention": "model.attention", "init_from": "model.init_from",
}


def config_overrides(params: dict) -> dict:
    """The dotted TrainConfig overrides of the flow's parameters (those in PARAMETER_KEYS)."""
    return {PARAMETER_KEYS[k]: v for k, v in params.items() if k in PARAMETER_KEYS}


def effective_config(dataset: str, config: str | dict | None, overrides: dict) -> TrainConfig:
    """TrainConfig from a YAML path or a dict of fields, plus the flow's own parameters (dotted keys)."""
    try:
        data = TrainConfig.from_yaml(config).model_dump() if isinstance(config, str) else json.loads(json.dumps(config or {}))
        return TrainConfig.model_validate(set_dotted(data, {"data.dataset": dataset} | overrides))
    except ValidationError as err:
        raise TrainUsageError(f"invalid training config: {explain(err, TrainConfig)}") from err
    except ValueError as err:
        raise TrainUsageError(f"invalid training config: {err}") from err


def summary_key(run: Path) -> str:
    """The run's own Prefect artifact key: `train-<dir name>-<hash of its absolute path>` (two runs never
    share one; re-running the same run dir updates its artifact). Keys allow a-z, 0-9 and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", run.name.lower()).strip("-")[:40] or "run"
    return f"train-{slug}-{hashlib.sha1(str(Path(run).resolve()).encode()).hexdigest()[:8]}"


def summary_markdown(run: Path, result: dict, chart: Path | None) -> str:
    metrics = read_metrics(run)
    last = metrics[-1] if metrics else {}
    samples = sorted((run / "samples").glob("step-*/sheet.png"))

    def fmt(value, spec=".4f"):
        return format(value, spec) if isinstance(value, (int, float)) else "n/a"

    lines = [
        f"# Training run `{run}`",
        "",
        "| | |", "|---|---|",
        f"| step | {result.get('step')} |",
        f"| final loss | {fmt(result.get('loss'))} |",
        f"| scenes/s (last step) | {fmt(last.get('samples_per_s'), '.2f')} |",
        f"| data wait (last step) | {fmt(last.get('data_wait'), '.1%')} |",
        f"| MFU estimate (last step) | {fmt(last.get('mfu'), '.1%')} |",
        f"| wall time | {fmt(result.get('wall_s'), '.0f')} s |",
        f"| where | {result.get('where')} |",
        f"| export | `{result.get('export')}` |",
        "",
        f"Loss curve: `{chart}`" if chart else "No metrics were written.",
        f"Latest validation sample: `{samples[-1]}`" if samples else "",
        f"TensorBoard: `tensorboard --logdir {run / 'tb'}`",
    ]
    return "\n".join(lines) + "\n"
