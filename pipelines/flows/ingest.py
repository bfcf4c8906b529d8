"""The `ingest` flow: films -> a curated dataset of WebDataset scene shards (dataprep/).

    list_sources -> diff_manifest -> curate (in-process Ray | a Ray job) -> verify_dataset
                 -> publish_report (table of films + markdown summary) -> record_run

Where the curation runs depends on `ray_address`:
  None                     a local Ray started in this process (the embedded default)
  ray://head:10001, auto   this process joins the cluster as the Ray driver
  http://head:8265         a Ray job through the Jobs API of that dashboard:
                           `lct curate SOURCES --out OUT --config curate.yaml --ray-address auto`
                           (see pipelines/flows/common.py for what the cluster needs)

Re-running with the same `out` resumes: films already `ok` in its manifest are skipped by
`curate`; the diff step only reports them. A run whose share of failed films exceeds
`max_failure_rate` publishes its report and then fails. The flow runner must see `sources`
and `out` (a bucket, or a filesystem shared with the cluster) to list and check them.

Every function below the tasks is plain Python, usable and tested without Prefect.
"""

import json
import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dataprep import manifest
from dataprep.config import CurateConfig, load_yaml
from dataprep.dataset import DatasetCheck, check_dataset
from dataprep.run import CurateFailed, CurateUsageError
from dataprep.sources import absolute, list_films
from pipelines.flows.common import is_jobs_address, run_ray_job
from pipelines.markdown import md_text

TABLE_KEY, SUMMARY_KEY = "ingest-films", "ingest-summary"
MAX_TABLE_ROWS = 5000  # the film table artifact shows failures first, then this many rows at most


# ----------------------------------------------------------------------------- the flow


@flow(name="ingest", log_prints=True)
def ingest(
    sources: list[str],
    out: str,
    config: str | dict[str, Any] | None = None,
    ray_address: str | None = None,
    max_failure_rate: float | None = None,
) -> dict:
    """Curate the films under `sources` into the dataset `out` (re-running resumes).

    Args:
        sources: Video files, folders, globs or fsspec URLs (s3://bucket/prefix/).
        out: Dataset directory (shards/, manifest/, dataset.json).
        config: A CurateConfig YAML file, or a dict of CurateConfig fields overriding the defaults.
        ray_address: None = local Ray; ray://host:10001 or auto = join as driver;
            http://host:8265 = submit a Ray job to that dashboard.
        max_failure_rate: Fail when more than this share of the films attempted failed (0-1);
            None = the config's value.
    """
    # the paths a user gives, absolute (the flow runner's cwd): a Ray job runs `lct curate` in its own folder
    sources, out = [absolute(s) for s in sources], absolute(out)
    config = absolute(config) if isinstance(config, str) else config
    cfg = effective_config(config, ray_address, max_failure_rate)
    params = {"sources": sources, "out": out, "config": config, "ray_address": ray_address,
              "max_failure_rate": max_failure_rate}
    uris = list_sources(sources, cfg.extensions)
    diff = diff_manifest(uris, out)
    record_run(out, params, cfg, {"state": "running", "to_curate": len(diff.todo), "already_done": len(diff.done)})
    if is_jobs_address(ray_address):
        run = curate_on_ray_job(sources, out, cfg, ray_address)
    else:
        run = curate_in_process(sources, out, cfg)
    check = verify_dataset(out, uris)
    report = publish_report(out, uris, diff, run, check, cfg.max_failure_rate)
    record_run(out, params, cfg, {"state": "failed" if run.failure or check.problems else "completed"} | report)
    if run.failure:
        raise CurateFailed(run.failure)
    if check.problems:
        raise DatasetInvalid(f"{len(check.problems)} problems in {out}: " + "; ".join(check.problems[:5]))
    return report


# ----------------------------------------------------------------------------- tasks


@task(name="list-sources", retries=2, retry_delay_seconds=10)
def list_sources(sources: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Expand sources to film URIs (idempotent: retried on a flaky bucket listing)."""
    uris = list_films(sources, extensions)
    get_run_logger().info("%d films under %s", len(uris), ", ".join(sources))
    return uris


@task(name="diff-manifest")
def diff_manifest(uris: list[str], out: str) -> "FilmDiff":
    diff = diff_films(uris, Path(out))
    get_run_logger().info(
        "%d films to curate, %d already ok in %s (skipped)", len(diff.todo), len(diff.done), out
    )
    return diff


@task(name="curate-in-process")
def curate_in_process(sources: list[str], out: str, cfg: CurateConfig) -> "CurateRun":
    """dataprep.run.curate with this process as the Ray driver (local Ray unless cfg.ray.address)."""
    import ray

    from dataprep.run import connect, curate

    logger = get_run_logger()
    started_ray = not ray.is_initialized()
    dashboard = connect(cfg.ray)
    logger.info("Ray dashboard: %s", dashboard or "n/a")

    def on_film(outcome, done, total):
        if outcome.status == "failed":
            logger.warning("failed %s: %s", outcome.uri, outcome.reason)
        if done == total or done % 50 == 0:
            logger.info("%d/%d films curated", done, total)

    try:
        curate(sources, out, cfg, on_film=on_film, on_status=logger.info)
        failure = None
    except CurateFailed as e:  # the policy failed; the outputs are valid and get reported
        failure = str(e)
    finally:
        if started_ray:
            ray.shutdown()
    return CurateRun(dashboard=dashboard, failure=failure)


@task(name="curate-on-ray-job")
def curate_on_ray_job(sources: list[str], out: str, cfg: CurateConfig, dashboard: str) -> "CurateRun":
    """`lct curate` as a Ray job on the cluster behind `dashboard`; its logs stream into this run's log."""
    logger = get_run_logger()
    config_yaml = yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
    result = run_ray_job(
        dashboard,
        curate_entrypoint(sources, out),
        files={"curate.yaml": config_yaml},
        log=lambda line: logger.info("[ray job] %s", line),
        metadata={"lct_flow": "ingest", "out": str(out)},
    )
    return interpret_curate_job(result.status, result.exit_code, result.logs, result.message, Path(out),
                                cfg.max_failure_rate, dashboard, result.job_id)


@task(name="verify-dataset", retries=1)
def verify_dataset(out: str, uris: list[str] | None = None) -> "DatasetCheck":
    """The dataset's shards, checksums and manifest agree, and every film listed for this run is in it."""
    check = check_dataset(Path(out), uris)
    logger = get_run_logger()
    logger.info("checked %d shards (sha256), %d samples <-> %d manifest shot rows", check.shards, check.samples,
                check.shot_rows)
    for problem in check.problems:
        logger.error("dataset problem: %s", problem)
    return check


@task(name="publish-report")
def publish_report(out: str, uris: list[str], diff: "FilmDiff", run: "CurateRun", check: "DatasetCheck",
                   limit: float) -> dict:
    """A table artifact of every film's status and a markdown summary; returns the numbers."""
    rows = film_rows(Path(out), uris, set(diff.done))
    stats = run_stats(rows, Path(out))
    table = sorted(rows, key=lambda r: r["status"] == "ok")[:MAX_TABLE_ROWS]
    create_table_artifact(
        table=table,
        key=TABLE_KEY,
        description=f"films of {out}: {len(rows)} listed" + (f", first {MAX_TABLE_ROWS} shown" if len(rows) > len(table) else ""),
    )
    create_markdown_artifact(
        markdown=summary_markdown(out, stats, rows, check, run, limit),
        key=SUMMARY_KEY,
        description=f"ingest summary of {out}",
    )
    return stats | {"dashboard": run.dashboard, "ray_job": run.job_id, "failure": run.failure,
                    "problems": check.problems}


@task(name="record-run")
def record_run(out: str, params: dict, cfg: CurateConfig, result: dict) -> str:
    """Save this run's parameters, effective config and result in OUT/runs/ingest-<flow run>.json."""
    from prefect.runtime import flow_run

    path = run_record_path(Path(out), flow_run.id or "local", flow_run.scheduled_start_time)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"flow_run": {"id": flow_run.id, "name": flow_run.name, "url": flow_run.ui_url},
           "parameters": params, "config": json.loads(cfg.model_dump_json()), "result": result}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return str(path)


# ----------------------------------------------------------------------------- the logic


class DatasetInvalid(RuntimeError):
    """The dataset's shards, checksums and manifest disagree."""


@dataclass
class FilmDiff:
    todo: list[str]  # not yet ok in the manifest (new, or failed/skipped before)
    done: list[str]  # already ok: curate skips them


@dataclass
class CurateRun:
    dashboard: str | None
    failure: str | None = None  # why the failure policy failed the run, when it did
    job_id: str | None = None


def effective_config(config: str | dict | None, ray_address: str | None, max_failure_rate: float | None) -> CurateConfig:
    """CurateConfig from a YAML path or a dict of overrides, plus the flow's own parameters."""
    if isinstance(config, str):
        data = load_yaml(CurateConfig, config).model_dump()
    else:
        data = CurateConfig.model_validate(config or {}).model_dump()
    if ray_address and not is_jobs_address(ray_address):
        data["ray"]["address"] = ray_address
    if max_failure_rate is not None:
        data["max_failure_rate"] = max_failure_rate
    return CurateConfig.model_validate(data).with_absolute_paths()


def diff_films(uris: list[str], out: Path) -> FilmDiff:
    done = manifest.ok_films(out)
    return FilmDiff(todo=[u for u in uris if u not in done], done=[u for u in uris if u in done])


def curate_entrypoint(sources: list[str], out: str, config_name: str = "curate.yaml") -> str:
    """The Ray job's command line; `config_name` is uploaded in the job's working_dir."""
    return shlex.join(["lct", "curate", *sources, "--out", str(out), "--config", config_name, "--ray-address", "auto"])


def interpret_curate_job(status: str, exit_code: int | None, logs: str, message: str, out: Path, limit: float,
                         dashboard: str, job_id: str) -> CurateRun:
    """Map a finished `lct curate` job onto the flow: ok, failed policy (report it), or an error (raise)."""
    if status == "SUCCEEDED":
        return CurateRun(dashboard=dashboard, job_id=job_id)
    tail = "\n".join(logs.strip().splitlines()[-20:])
    if exit_code == 2:
        raise CurateUsageError(f"Ray job {job_id}: `lct curate` rejected its input or config:\n{tail}")
    if exit_code == 1 and "curation failed" in logs and (out / "dataset.json").is_file():
        this_run = json.loads((out / "dataset.json").read_text())["this_run"]
        return CurateRun(
            dashboard=dashboard,
            job_id=job_id,
            failure=f"{this_run['failed']} of {this_run['ok'] + this_run['failed']} films failed "
            f"({this_run['failure_rate']:.0%}; max_failure_rate={limit:.0%}) in Ray job {job_id}; the others "
            f"were written to {out}",
        )
    raise RuntimeError(f"Ray job {job_id} {status} (exit code {exit_code}): {message}\n{tail}")


def film_rows(out: Path, uris: list[str], done_before: set[str]) -> list[dict]:
    """One row per listed film: its latest manifest status, and whether this run curated it."""
    path = out / "manifest" / "films.parquet"
    columns = ["film_id", "uri", "status", "error", "n_shots", "n_scenes"]
    latest = {r["uri"]: r for r in pq.read_table(path, columns=columns).to_pylist()} if path.is_file() else {}
    rows = []
    for uri in uris:
        row = latest.get(uri) or {"film_id": None, "uri": uri, "status": "missing",
                                  "error": "not in the manifest (the run stopped before it)", "n_shots": 0, "n_scenes": 0}
        rows.append({c: row[c] for c in columns} | {"this_run": uri not in done_before})
    return rows


def run_stats(rows: list[dict], out: Path) -> dict:
    """Counts of the films this run attempted, throughput over curate's own wall time, dataset totals."""
    mine = [r for r in rows if r["this_run"]]
    counts = Counter(r["status"] for r in mine)
    attempted = counts["ok"] + counts["failed"]
    shots = sum(r["n_shots"] or 0 for r in mine if r["status"] == "ok")
    doc_path = out / "dataset.json"
    doc = json.loads(doc_path.read_text()) if doc_path.is_file() else {}
    wall_s = float(doc.get("wall_time_s", 0.0))
    minutes = wall_s / 60 if wall_s > 0 else float("nan")
    return {
        "films_listed": len(rows),
        "already_done": len(rows) - len(mine),
        "ok": counts["ok"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "missing": counts["missing"],
        "failure_rate": counts["failed"] / attempted if attempted else 0.0,
        "shots": shots,
        "wall_s": round(wall_s, 2),
        "films_per_min": round(len(mine) / minutes, 2) if mine and wall_s > 0 else 0.0,
        "shots_per_min": round(shots / minutes, 2) if wall_s > 0 else 0.0,
        "totals": doc.get("counts", {}),
        "captions": doc.get("captions", {}),
    }


def summary_markdown(out: str, stats: dict, rows: list[dict], check: DatasetCheck, run: CurateRun, limit: float) -> str:
    verdict = "**FAILED**" if run.failure or check.problems else "passed"
    t = stats["totals"]
    films_total = t.get("films", {})
    lines = [
        f"# ingest -> {md_text(out)}: {verdict}",
        "",
        "| this run | films |",
        "|---|---:|",
        f"| listed | {stats['films_listed']} |",
        f"| already ok (skipped) | {stats['already_done']} |",
        f"| curated ok | {stats['ok']} |",
        f"| failed | {stats['failed']} |",
        f"| skipped (duplicate / no usable shots) | {stats['skipped']} |",
        "",
        f"Failure rate **{stats['failure_rate']:.1%}** (limit {limit:.0%}). "
        f"Throughput **{stats['films_per_min']:.2f} films/min**, **{stats['shots_per_min']:.1f} shots/min** "
        f"({stats['shots']} shots in {stats['wall_s']:.1f} s of curation).",
        "",
        f"Dataset: {films_total.get('ok', 0)} films ok, {films_total.get('failed', 0)} failed, "
        f"{films_total.get('skipped', 0)} skipped; {t.get('shots', 0)} shots in {t.get('scenes', 0)} scenes, "
        f"{t.get('shards', 0)} shards.",
        _captions_line(stats.get("captions") or {}),
        f"Checked: {check.shards} shards (sha256), {check.samples} samples <-> {check.shot_rows} manifest shot rows"
        + (": all consistent." if not check.problems else f": **{len(check.problems)} problems**."),
        "",
        f"Ray dashboard: {_link(run.dashboard)}" + (f" (job `{run.job_id}`)" if run.job_id else ""),
    ]
    if run.failure:
        lines += ["", f"**Failure policy:** {md_text(run.failure)}"]
    failed = [r for r in rows if r["status"] in ("failed", "missing")]
    if failed:
        lines += ["", "## Films that failed", "", "| film | reason |", "|---|---|"]
        lines += [f"| {md_text(r['uri'])} | {md_text(r['error'] or '')} |" for r in failed[:200]]
    if check.problems:
        lines += ["", "## Dataset problems", ""] + [f"- {md_text(p)}" for p in check.problems[:200]]
    return "\n".join(lines) + "\n"


def _captions_line(c: dict) -> str:
    if not c.get("scenes"):
        return "Captions: no scene written this run."
    line = (f"Captions (this run's {c['scenes']} scenes): {c['captioned']} captioned, **{c['failed']} caption "
            f"failed** ({c['failure_rate']:.0%}, limit {c['max_caption_failure_rate']:.0%}), "
            f"{c['no_captioner']} without a captioner configured.")
    if c["no_captioner"]:
        line += " **Uncaptioned scenes**: configure `caption.vlm` or `caption.coca_pretrained` (or ship sidecars)."
    return line


def _link(url: str | None) -> str:
    return f"[{url}]({url})" if url else "n/a"


def run_record_path(out: Path, flow_run_id: str, when: datetime | None) -> Path:
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return out / "runs" / f"ingest-{stamp}-{str(flow_run_id)[:8]}.json"
