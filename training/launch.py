"""Launch training on Ray Train: checks before anything starts, then a TorchTrainer over the workers.

    result = launch(cfg, run_dir, until=None, on_metrics=print)   # what `lct train` calls

RUN layout: config.yaml (the effective TrainConfig), deepspeed.json (what the engine uses at
this world size), checkpoints/step-XXXXXX (Ray Train storage: RunConfig(storage_path=RUN,
name="checkpoints")), metrics.jsonl, workers.jsonl (each worker's rank and Ray node, one line
per start of the group), tb/, samples/, export/. Re-running with the same RUN
resumes from the newest intact checkpoint (training/resume.py checks them first; a damaged one is
passed over and said so); a dead worker restarts the group from the latest
(FailureConfig(max_failures)). The DeepSpeed C++ ops are JIT-built once into TORCH_EXTENSIONS_DIR
(default: .cache/torch_extensions beside the repo).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from dataprep.dataset import check_layout, shard_paths
from dataprep.lock import writes_to

from .config import TrainConfig, deepspeed_config, dump_yaml
from .metrics import read_metrics
from .resume import ResumeError, plan_resume

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# sections a resumed run may change: how it runs, not what it trains
RESUMABLE_CHANGES = {"engine", "schedule"}


class TrainUsageError(ValueError):
    """The run cannot start as configured; nothing was trained."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    export: Path | None
    wall_s: float
    metrics: list[dict] = field(default_factory=list)


def check(cfg: TrainConfig, run_dir: Path) -> None:
    """Everything that can be known wrong before a worker starts (teaching errors)."""
    if not cfg.data.dataset:
        raise TrainUsageError("no dataset: pass --data DIR (the --out of `lct curate`) or set data.dataset")
    try:
        shard_paths(cfg.data.dataset)
        check_layout(cfg.data.dataset)
    except ValueError as err:
        raise TrainUsageError(str(err)) from err
    info = json.loads((Path(cfg.data.dataset) / "dataset.json").read_text()) if (Path(cfg.data.dataset) / "dataset.json").is_file() else {}
    scenes = (info.get("counts") or {}).get("scenes")
    if scenes is not None and cfg.data.holdout >= scenes:
        raise TrainUsageError(f"data.holdout={cfg.data.holdout} holds out every one of the {scenes} scenes")
    if cfg.model.init_from:
        from model.export import CONFIG, architecture_diff, config_from_dict, export_dir

        try:
            source = config_from_dict(json.loads((export_dir(cfg.model.init_from) / CONFIG).read_text()))
        except FileNotFoundError as err:
            raise TrainUsageError(f"model.init_from: {err}") from err
        except (TypeError, ValueError) as err:
            raise TrainUsageError(f"model.init_from: {export_dir(cfg.model.init_from) / CONFIG}: {err}") from err
        diff = architecture_diff(cfg.arch(), source)
        if diff:
            raise TrainUsageError(
                f"model.init_from={cfg.model.init_from} has another architecture than this run (field: (init_from, "
                f"this run)): {diff}; only attention and grad_checkpointing may change (a Wan run: give the same "
                "--pretrained folder, or none: the run's own)")
    saved = run_dir / "config.yaml"
    if saved.is_file():
        before = yaml.safe_load(saved.read_text()) or {}
        try:   # an earlier run's renamed keys (data.max_shots) compare under their new names
            before = TrainConfig.model_validate(before).model_dump(mode="json")
        except ValueError:
            pass
        now = cfg.model_dump(mode="json")
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise TrainUsageError(
                f"{run_dir} is a run with a different {changed} config (see {saved}); resuming may only change "
                f"{sorted(RESUMABLE_CHANGES)}. Use a new --out, or start from its weights with --init-from {run_dir}"
            )


def prepare_run(cfg: TrainConfig, run_dir: Path) -> str | None:
    """Check, then write RUN/config.yaml, RUN/deepspeed.json and RUN/data.json (what the run trains on,
    with its caption coverage). Returns a warning when the dataset has uncaptioned scenes (also logged)."""
    check(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    ds = deepspeed_config(cfg, cfg.engine.workers)
    (run_dir / "deepspeed.json").write_text(json.dumps(ds, indent=2) + "\n")
    captions = caption_coverage(cfg.data.dataset)
    warning = None
    if captions["scenes_uncaptioned"]:
        warning = (f"training on {captions['scenes_uncaptioned']} of {captions['scenes']} scenes WITHOUT captions "
                   f"(caption_source none in {cfg.data.dataset}): the model learns them unconditioned. Curate with a "
                   "VLM endpoint (caption.vlm), CoCa weights (caption.coca_pretrained) or sidecar captions.")
        log.warning(warning)
    info = {"dataset": str(cfg.data.dataset), "captions": captions, "warnings": [warning] if warning else []}
    (run_dir / "data.json").write_text(json.dumps(info, indent=2) + "\n")
    return warning


def caption_coverage(dataset: str | Path) -> dict:
    """{scenes, scenes_uncaptioned}: scenes of the dataset's manifest, and those with a shot whose
    caption_source is `none` (no captioner gave it a caption)."""
    import pyarrow.parquet as pq

    path = Path(dataset) / "manifest" / "shots.parquet"
    if not path.is_file():
        return {"scenes": 0, "scenes_uncaptioned": 0}
    rows = pq.read_table(path, columns=["scene_id", "caption_source", "kept"]).to_pylist()
    scenes = {r["scene_id"] for r in rows if r["kept"]}
    bare = {r["scene_id"] for r in rows if r["kept"] and r["caption_source"] == "none"}
    return {"scenes": len(scenes), "scenes_uncaptioned": len(bare)}


def connect(address: str | None, workers: int, cpus: int, gpus: int = 0) -> str | None:
    """Join `address` (or RAY_ADDRESS) or start a local Ray; check it can host the workers; returns the dashboard URL.

    GPUs are checked on a local Ray only: a cluster may add GPU nodes on demand (the autoscaler
    of infra/k8s/raycluster.yaml starts its GPU group at 0), a local Ray never will, and Ray Train
    would wait for them forever.
    """
    import ray

    from dataprep.cluster import connect as join_ray

    local = not (address or os.environ.get("RAY_ADDRESS"))
    url = join_ray(address)
    have = ray.cluster_resources().get("CPU", 0)
    if workers * cpus > have:
        raise TrainUsageError(f"{workers} workers x {cpus} CPUs need {workers * cpus} CPUs; the Ray cluster has {have:g}")
    have_gpus = ray.cluster_resources().get("GPU", 0)
    if local and workers * gpus > have_gpus:
        raise TrainUsageError(
            f"{workers} workers x gpus_per_worker={gpus} need {workers * gpus} GPUs; the local Ray sees {have_gpus:g}. "
            "On CPU use --gpus-per-worker 0 (fp32, gloo); for GPUs pass --ray-address of a cluster that has them"
        )
    return url


@writes_to("run_dir", "lct train")  # one writer per RUN (RUN/lct.lock); a second one gets OutputBusy
def launch(
    cfg: TrainConfig, run_dir: str | Path, until: int | None = None,
    on_metrics: Callable[[dict], None] | None = None, on_status: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on Ray Train; raises TrainUsageError before starting, RuntimeError if training failed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    warning = prepare_run(cfg, run_dir)
    if warning and on_status:
        on_status(f"WARNING: {warning}")
    try:
        resume = plan_resume(run_dir)    # every checkpoint checked before one is resumed from
    except ResumeError as err:
        raise TrainUsageError(str(err)) from err
    for line in resume.describe():
        log.warning(line)
        if on_status:
            on_status(f"WARNING: {line}")
    eng = cfg.engine
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    dashboard = connect(eng.ray_address, eng.workers, eng.cpus_per_worker, eng.gpus_per_worker)
    if on_status:
        on_status(f"training on {eng.workers} Ray workers; Ray dashboard: {dashboard or 'n/a'}; run: {run_dir}")
    resources = {"CPU": eng.cpus_per_worker} | ({"GPU": eng.gpus_per_worker} if eng.gpus_per_worker else {})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "until": until, "ray": True,
                           "resume_from": resume.resume_from},
        scaling_config=ScalingConfig(num_workers=eng.workers, use_gpu=bool(eng.gpus_per_worker), resources_per_worker=resources),
        run_config=RunConfig(
            name="checkpoints",
            storage_path=str(run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.schedule.keep_checkpoints),
            failure_config=FailureConfig(max_failures=eng.max_failures),
            worker_runtime_env={"env_vars": {
                "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
                "DS_ACCELERATOR": "cuda" if eng.gpus_per_worker else "cpu",
            }},
        ),
    )
    done = threading.Event()
    relay = threading.Thread(target=_relay, args=(run_dir, on_metrics, done), daemon=True) if on_metrics else None
    if relay:
        relay.start()
    try:
        result = trainer.fit()
    finally:
        done.set()
        if relay:
            relay.join(timeout=5)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    metrics = read_metrics(run_dir)
    last = metrics[-1] if metrics else {}
    export = run_dir / "export"
    return TrainResult(run_dir, int(last.get("step", 0)), last.get("loss"), export if export.is_dir() else None,
                       time.perf_counter() - started, metrics)


def _worker(args: dict) -> None:
    from .train import train_worker

    quiet_report_log()
    record_placement(Path(args["run_dir"]))
    train_worker(args)


def quiet_report_log() -> None:
    """Drop Ray Train's INFO line per `ray.train.report` ("Reporting training result N: ...", the
    whole metrics dict) from the driver's terminal: the run's metrics are in RUN/metrics.jsonl and
    the flow's progress. Ray names that logger by its file path (logging.getLogger(__file__))."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def record_placement(run_dir: Path) -> None:
    """Append this worker's {rank, world_size, node_id, node_ip, pid, time} to RUN/workers.jsonl.

    One line per worker per (re)start of the group: where each rank ran, and where a restarted
    group went after a node was lost.
    """
    import ray
    import ray.train

    context = ray.train.get_context()
    line = {"rank": context.get_world_rank(), "world_size": context.get_world_size(),
            "node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(), "time": time.time()}
    with (run_dir / "workers.jsonl").open("a") as f:   # one short O_APPEND write per line
        f.write(json.dumps(line) + "\n")


def read_placement(run_dir: str | Path) -> list[dict]:
    """RUN/workers.jsonl as written by record_placement (empty before the first start)."""
    path = Path(run_dir) / "workers.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _relay(run_dir: Path, on_metrics: Callable[[dict], None], done: threading.Event) -> None:
    """Feed new lines of RUN/metrics.jsonl to `on_metrics` while training runs."""
    path = run_dir / "metrics.jsonl"
    offset = path.stat().st_size if path.is_file() else 0
    while True:
        finished = done.wait(0.5)
        if path.is_file():
            with path.open() as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete.encode())
            for line in complete.splitlines():
                try:
                    on_metrics(json.loads(line))
                except ValueError:
                    continue
        if finished:
            return
