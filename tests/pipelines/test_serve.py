"""Deployments of the flows: built from a ServeConfig, registered with a real (temporary) Prefect
server with their schedules, and `lct flows serve` serving them until it is stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow
from typer.testing import CliRunner

from pipelines.serve import ServeConfig, build_deployments, describe, load_config, register

LCT = str(Path(sys.executable).parent / "lct")


@flow(name="train")
def fake_train(data: str, out: str, steps: int = 10) -> None:
    """Stands in for pipelines.flows.train:train (registered by name, on demand)."""


def _config(tmp_path: Path) -> ServeConfig:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "ingest:\n"
        "  name: nightly\n"
        '  cron: "15 3 * * 1-5"\n'
        "  timezone: Europe/Paris\n"
        f"  parameters: {{sources: [{tmp_path / 'incoming'}], out: {tmp_path / 'ds'}, max_failure_rate: 0.1}}\n"
        "train: {name: on-demand, parameters: {data: /data/ds, out: /data/runs/a}}\n"
    )
    return load_config(path)


def test_dry_run_lists_the_deployments_and_registers_nothing(tmp_path):
    from pipelines.cli import app

    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text('ingest: {cron: "0 4 * * *", parameters: {sources: [/films], out: /ds}}\n')
    result = CliRunner().invoke(app, ["flows", "serve", "--config", str(cfg_path), "--dry-run"],
                                env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})  # nothing may listen there
    assert result.exit_code == 0, result.output
    assert "ingest/nightly" in result.output and "0 4 * * *" in result.output


def test_a_bad_schedule_is_rejected_before_anything_is_registered(tmp_path):
    from pipelines.cli import app

    bad = tmp_path / "serve.yaml"
    bad.write_text("ingest: {parameters: {sources: /films}}\n")  # `out` missing, sources not a list
    result = CliRunner().invoke(app, ["flows", "serve", "--config", str(bad), "--dry-run"])
    assert result.exit_code == 2 and "out" in result.output
    bad.write_text("ingest: {crn: '0 2 * * *'}\n")
    result = CliRunner().invoke(app, ["flows", "serve", "--config", str(bad), "--dry-run"])
    assert result.exit_code == 2 and "crn" in result.output


def test_every_flow_is_registered_by_default():
    from pipelines.flows.end_to_end import end_to_end
    from pipelines.flows.train import train

    names = [row["deployment"] for row in describe(build_deployments(ServeConfig()))]
    expected = ["ingest/nightly"] + [f"{f.name}/on-demand" for f in (train, end_to_end)]
    assert sorted(names) == sorted(expected) == ["end_to_end/on-demand", "ingest/nightly", "train/on-demand"]


def test_deployments_are_registered_with_their_schedules(prefect_server, tmp_path):
    from prefect import get_client

    from pipelines.flows.ingest import ingest

    cfg = _config(tmp_path)
    ids = register(build_deployments(cfg, {"ingest": ingest, "train": fake_train}))
    assert len(ids) == 2
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("ingest/nightly")
        train = client.read_deployment_by_name("train/on-demand")
    (schedule,) = nightly.schedules
    assert schedule.active and schedule.schedule.cron == "15 3 * * 1-5" and schedule.schedule.timezone == "Europe/Paris"
    assert nightly.parameters["max_failure_rate"] == 0.1 and nightly.entrypoint == "pipelines.flows.ingest.ingest"
    assert set(nightly.parameter_openapi_schema["properties"]) == {"sources", "out", "config", "ray_address",
                                                                  "max_failure_rate"}  # the UI form
    assert train.schedules == [] and train.parameters == {"data": "/data/ds", "out": "/data/runs/a"}
    assert "lct" in nightly.tags and "ingest" in nightly.tags

    # registering again (a changed schedule) updates the deployment in place
    changed = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"cron": "0 5 * * *"})})
    assert register(build_deployments(changed, {"ingest": ingest}))[0] == ids[0]
    with get_client(sync_client=True) as client:
        assert [s.schedule.cron for s in client.read_deployment_by_name("ingest/nightly").schedules] == ["0 5 * * *"]


@pytest.mark.slow
def test_lct_flows_serve_registers_and_serves_until_stopped(prefect_server, tmp_path):
    """The real command against the server: the deployment appears, the process serves, SIGINT stops it."""
    import prefect.settings
    from prefect import get_client

    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(f'ingest: {{name: watch, cron: "*/30 * * * *", paused: true, '
                        f'parameters: {{sources: [{tmp_path}], out: {tmp_path / "ds"}}}}}\n')
    env = dict(os.environ, PREFECT_API_URL=prefect.settings.PREFECT_API_URL.value())
    proc = subprocess.Popen([LCT, "flows", "serve", "--config", str(cfg_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, found = time.monotonic() + 120, None
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            with get_client(sync_client=True) as client:
                try:
                    found = client.read_deployment_by_name("ingest/watch")
                except Exception:
                    time.sleep(1)
        assert found is not None, proc.communicate(timeout=30)[0] if proc.poll() is not None else "timed out"
        assert found.schedules[0].schedule.cron == "*/30 * * * *"
        time.sleep(2)
        assert proc.poll() is None  # still serving
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert "ingest/watch" in output
