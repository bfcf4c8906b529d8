"""The `ingest` flow against a temporary Prefect server, with real Ray on synthetic films:
in-process Ray, the failure-rate policy, and `lct curate` submitted through the Ray Jobs API."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import ray

from dataprep.synthetic import SynthConfig, make_films
from tests._ray import ray_head
from tests.conftest import FAST_CURATION
from tests.pipelines.conftest import flow_run_artifacts


@pytest.fixture(scope="module")
def local_ray():
    """The flow reuses a Ray already running in its process (and then leaves it running)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ingest-films")
    make_films(SynthConfig(n_films=2, seed=5, max_film_seconds=6.0, sizes=[(128, 96)]), out)  # small: fast
    return out


@pytest.fixture(scope="module")
def ingested(prefect_server, local_ray, films, tmp_path_factory):
    """One completed ingest run: (its final state, the dataset dir)."""
    from pipelines.flows.ingest import ingest

    out = tmp_path_factory.mktemp("ingest") / "dataset"
    state = ingest(sources=[str(films)], out=str(out), config=FAST_CURATION, return_state=True)
    return state, out


def test_effective_config_routes_the_ray_address_and_applies_overrides(tmp_path):
    from pipelines.flows.ingest import effective_config

    cfg = effective_config({"clips": {"width": 64, "height": 64}}, "ray://head:10001", 0.5)
    assert (cfg.clips.width, cfg.ray.address, cfg.max_failure_rate) == (64, "ray://head:10001", 0.5)
    assert effective_config(None, "http://head:8265", None).ray.address is None  # a job joins with `auto`
    path = tmp_path / "curate.yaml"
    path.write_text("shards: {max_samples: 3}\n")
    assert effective_config(str(path), None, None).shards.max_samples == 3
    with pytest.raises(ValueError, match="treshold"):
        effective_config({"shots": {"treshold": 3}}, None, None)


def test_job_outcomes_map_to_success_policy_failure_or_error(tmp_path):
    from dataprep.run import CurateUsageError
    from pipelines.flows.common import _LineSplitter
    from pipelines.flows.ingest import curate_entrypoint, interpret_curate_job

    assert curate_entrypoint(["/films/my film.mp4"], "/data/ds") == (
        "lct curate '/films/my film.mp4' --out /data/ds --config curate.yaml --ray-address auto")
    args = (tmp_path, 0.25, "http://h:8265", "job-1")
    assert interpret_curate_job("SUCCEEDED", 0, "", "", *args).failure is None
    (tmp_path / "dataset.json").write_text(json.dumps({"this_run": {"ok": 1, "failed": 3, "failure_rate": 0.75}}))
    run = interpret_curate_job("FAILED", 1, "...\ncuration failed: 3 of 4", "exit code 1", *args)
    assert "3 of 4 films failed (75%" in run.failure and run.job_id == "job-1"
    with pytest.raises(CurateUsageError, match="matched no film"):
        interpret_curate_job("FAILED", 2, "error: matched no film", "", *args)
    with pytest.raises(RuntimeError, match="Traceback"):
        interpret_curate_job("FAILED", 1, "Traceback (most recent call last): boom", "", *args)

    lines = []
    split = _LineSplitter(lines.append)
    split.feed("a\nb")
    split.feed("a\nbc\n\nd")
    split.feed("a\nbc\n\nd", final=True)
    assert lines == ["a", "bc", "d"]


@pytest.mark.slow  # a Prefect server + a curation run: tens of seconds on 2 cores
def test_ingest_completes_and_publishes_its_report(ingested, films):
    from pipelines.flows.ingest import SUMMARY_KEY, TABLE_KEY, check_dataset

    state, out = ingested
    assert state.is_completed(), state
    report = state.result()
    assert (report["ok"], report["failed"], report["already_done"]) == (2, 0, 0)
    assert report["films_per_min"] > 0 and report["shots_per_min"] > 0

    artifacts = flow_run_artifacts(state)
    assert {TABLE_KEY, SUMMARY_KEY} <= set(artifacts)
    table = json.loads(artifacts[TABLE_KEY].data)
    assert sorted(r["uri"] for r in table) == sorted(str(p) for p in films.glob("*.mp4"))
    assert all(r["status"] == "ok" and r["n_shots"] > 0 and r["n_scenes"] > 0 and r["film_id"] for r in table)
    summary = artifacts[SUMMARY_KEY].data
    assert "passed" in summary and "films/min" in summary and "shots/min" in summary and "Ray dashboard" in summary

    # the dataset is consistent, and the run's parameters + effective config were saved with it
    assert check_dataset(out).problems == []
    (record,) = (out / "runs").glob("ingest-*.json")
    doc = json.loads(record.read_text())
    assert doc["parameters"]["sources"] == [str(films)] and doc["config"]["clips"]["width"] == 64
    assert doc["result"]["state"] == "completed" and (out / "config.yaml").is_file()


@pytest.mark.slow  # a Prefect server + a curation run: tens of seconds on 2 cores
def test_check_dataset_catches_a_corrupted_shard(ingested, tmp_path):
    from pipelines.flows.ingest import check_dataset

    copy = tmp_path / "copy"
    shutil.copytree(ingested[1], copy)
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's bytes: same size, different sha256
    shard.write_bytes(bytes(data))
    (copy / "shards" / "scenes-000999.tar").write_bytes(b"")
    problems = check_dataset(copy).problems
    assert any(shard.name in p and "sha256" in p for p in problems), problems
    assert any("scenes-000999.tar is not listed" in p for p in problems), problems


@pytest.mark.slow  # a Prefect server + a curation run: tens of seconds on 2 cores
def test_failure_rate_over_the_limit_fails_the_run_but_publishes_the_report(ingested, films, tmp_path):
    """Resume the completed dataset with a broken film added and max_failure_rate 0: the good
    films are skipped (diff), the bad one fails, the run is Failed, the report is published."""
    from pipelines.flows.ingest import SUMMARY_KEY, TABLE_KEY, ingest

    out = tmp_path / "dataset"
    shutil.copytree(ingested[1], out)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(20_000))
    state = ingest(sources=[str(films), str(bad)], out=str(out), config=FAST_CURATION, max_failure_rate=0.0,
                   return_state=True)
    assert state.is_failed(), state
    assert "max_failure_rate" in state.message

    artifacts = flow_run_artifacts(state)
    rows = {Path(r["uri"]).name: r for r in json.loads(artifacts[TABLE_KEY].data)}
    assert rows["broken.mp4"]["status"] == "failed" and rows["broken.mp4"]["this_run"]
    assert "not a video" in rows["broken.mp4"]["error"]
    assert all(r["status"] == "ok" and not r["this_run"] for n, r in rows.items() if n != "broken.mp4")
    summary = artifacts[SUMMARY_KEY].data
    assert "FAILED" in summary and "broken.mp4" in summary and "not a video" in summary


@pytest.fixture(scope="module")
def ray_cluster():
    """A separate single-node Ray cluster with its dashboard + job server (tests/_ray.py). Token
    auth is disabled for it (RAY_AUTH_MODE=disabled): with the Ray 2.60 default the submitting
    process would need RAY_AUTH_MODE=token and the token."""
    with ray_head(num_cpus=2, env={"RAY_AUTH_MODE": "disabled"}) as url:
        yield url


@pytest.mark.slow
def test_ingest_as_a_ray_job_through_the_jobs_api(prefect_server, ray_cluster, films, tmp_path, monkeypatch):
    """Given paths relative to where the flow runs: the job's `lct curate` runs in its own working_dir."""
    from ray.job_submission import JobSubmissionClient

    from pipelines.flows.ingest import SUMMARY_KEY, check_dataset, ingest

    film = sorted(films.glob("*.mp4"))[0]
    out = tmp_path / "dataset"
    monkeypatch.chdir(tmp_path)
    state = ingest(sources=[os.path.relpath(film, tmp_path)], out="dataset", config=FAST_CURATION,
                   ray_address=ray_cluster, return_state=True)
    assert state.is_completed(), state
    report = state.result()
    assert report["ok"] == 1 and report["ray_job"] and report["dashboard"] == ray_cluster

    (job,) = [j for j in JobSubmissionClient(ray_cluster).list_jobs() if j.submission_id == report["ray_job"]]
    assert job.status == "SUCCEEDED" and job.entrypoint.startswith("lct curate ")
    assert "--ray-address auto" in job.entrypoint and job.metadata["lct_flow"] == "ingest"
    assert json.loads((out / "dataset.json").read_text())["counts"]["films"]["ok"] == 1
    assert check_dataset(out).problems == []
    summary = flow_run_artifacts(state)[SUMMARY_KEY].data
    assert f"[{ray_cluster}]({ray_cluster})" in summary and report["ray_job"] in summary

    # the job's own log lines reached the flow run's log (shipped to the API in batches)
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline, lines = time.monotonic() + 30, []
    while time.monotonic() < deadline and not any("films to curate" in line for line in lines):
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])),
                                    limit=200, offset=0)
        lines = [log.message for log in logs if log.message.startswith("[ray job]")]
        time.sleep(1)
    assert any("1 films to curate" in line for line in lines), lines


def test_film_names_from_data_cannot_break_the_markdown_summary(tmp_path):
    """A film named with a newline, backticks and pipes stays one literal row of the failures table."""
    from pipelines.flows.ingest import CurateRun, DatasetCheck, run_stats, summary_markdown

    hostile = "/films/a|b\n`rm -rf`|*bold*\r\n| x |.mp4"
    rows = [
        {"film_id": None, "uri": hostile, "status": "failed", "error": "bad | header\nline 2 `x`",
         "n_shots": 0, "n_scenes": 0, "this_run": True},
        {"film_id": "f", "uri": "/films/ok.mp4", "status": "ok", "error": None, "n_shots": 3, "n_scenes": 1,
         "this_run": True},
    ]
    md = summary_markdown(str(tmp_path / "out|`x`"), run_stats(rows, tmp_path), rows, DatasetCheck(),
                          CurateRun(dashboard=None), 0.25)
    lines = md.splitlines()
    table = lines[lines.index("| film | reason |"):]
    body = [line for line in table[2:] if line.startswith("|")]
    assert len(body) == 1, table  # one row per failed film: no line break leaked into the table
    cells = [c for c in __import__("re").split(r"(?<!\\)\|", body[0])]
    assert len(cells) == 4, body[0]  # | film | reason |: every pipe from the data is escaped
    assert "`" not in body[0].replace("\\`", "")  # no backtick opens a code span
    assert "rm -rf" in body[0] and "line 2" in body[0]  # nothing of the name is lost
    assert lines[0].startswith("# ingest -> ") and "\\|" in lines[0] and "\\`" in lines[0]


def test_the_summary_artifact_shows_caption_failures_and_uncaptioned_scenes(tmp_path):
    from pipelines.flows.ingest import CurateRun, DatasetCheck, run_stats, summary_markdown

    (tmp_path / "dataset.json").write_text(json.dumps({"counts": {}, "captions": {
        "scenes": 10, "captioned": 3, "failed": 5, "no_captioner": 2, "failure_rate": 0.5,
        "max_caption_failure_rate": 0.1}}))
    md = summary_markdown("ds", run_stats([], tmp_path), [], DatasetCheck(), CurateRun(dashboard=None), 0.25)
    assert "3 captioned, **5 caption failed** (50%, limit 10%), 2 without a captioner configured" in md
    assert "**Uncaptioned scenes**" in md
