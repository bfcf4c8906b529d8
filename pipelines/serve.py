"""Prefect deployments of the lct flows and their schedules: `lct flows serve [--config FILE]`.

    ingest      on a cron schedule (default nightly at 02:00 UTC) over a watch folder / bucket prefix
    train       on demand (no schedule)
    end_to_end  on demand (no schedule)

`lct flows serve` registers the deployments with the Prefect API (PREFECT_API_URL; without it
a temporary local server) and runs their flows in this process until stopped: the simplest
production (one long-lived process on a machine that can reach the Ray cluster). For a work
pool instead, see infra/prefect/prefect.yaml, which describes the same deployments.

The config (YAML, every key optional) is a `ServeConfig`:

    ingest:
      name: nightly
      cron: "0 2 * * *"
      timezone: UTC
      parameters: {sources: ["s3://films/incoming/"], out: /data/datasets/films,
                   ray_address: "http://ray-head:8265", max_failure_rate: 0.25}
    train: {name: on-demand, parameters: {}}
    limit: 1          # flow runs at once in this process
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dataprep.config import load_yaml

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduledDeployment(_Strict):
    """A deployment run on a cron schedule."""

    name: str = Field("nightly", description="Deployment name; runs are `<flow>/<name>`.")
    cron: str = Field("0 2 * * *", description="Cron expression (minute hour day month weekday).")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in.")
    paused: bool = Field(False, description="Register the schedule paused (runs only when triggered).")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"sources": ["/data/films/incoming"], "out": "/data/datasets/films"},
        description="Flow parameters of every scheduled run.",
    )


class OnDemandDeployment(_Strict):
    """A deployment without a schedule: runs start from the UI, `prefect deployment run` or the API."""

    name: str = Field("on-demand", description="Deployment name; runs are `<flow>/<name>`.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Default flow parameters.")


class ServeConfig(_Strict):
    ingest: ScheduledDeployment = ScheduledDeployment()
    train: OnDemandDeployment = OnDemandDeployment()
    end_to_end: OnDemandDeployment = OnDemandDeployment()
    tags: list[str] = Field(["lct"], description="Tags of every deployment.")
    limit: int | None = Field(1, ge=1, description="Flow runs at once in the serving process (None = no limit).")


def load_config(path: str | Path | None) -> ServeConfig:
    return load_yaml(ServeConfig, path) if path else ServeConfig()


def build_deployments(cfg: ServeConfig, flows: dict[str, Any] | None = None) -> list:
    """RunnerDeployments (not yet registered) of `flows` (key -> flow; default: ingest, train, end_to_end)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    if flows is None:
        from pipelines.flows.end_to_end import end_to_end
        from pipelines.flows.ingest import ingest
        from pipelines.flows.train import train

        flows = {"ingest": ingest, "train": train, "end_to_end": end_to_end}
    deployments = []
    for key, flow in flows.items():
        spec = getattr(cfg, key, None) or OnDemandDeployment()
        if isinstance(spec, ScheduledDeployment):
            flow.validate_parameters(spec.parameters)  # a bad schedule must fail here, not at 02:00
            deployment = flow.to_deployment(
                spec.name,
                schedules=[Cron(spec.cron, timezone=spec.timezone)],
                paused=spec.paused,
                parameters=spec.parameters,
                tags=cfg.tags + [key],
                description=f"{key} on cron '{spec.cron}' ({spec.timezone})",
                entrypoint_type=EntrypointType.MODULE_PATH,  # runs wherever lct is installed, whatever the cwd
            )
        else:
            deployment = flow.to_deployment(
                spec.name,
                parameters=spec.parameters,
                tags=cfg.tags + [key],
                description=f"{key}, on demand",
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        deployments.append(deployment)
    return deployments


def describe(deployments: list) -> list[dict]:
    """What would be registered: one row per deployment (for --dry-run and logs)."""
    rows = []
    for d in deployments:
        crons = [getattr(s.schedule, "cron", str(s.schedule)) for s in d.schedules or []]
        rows.append({"deployment": f"{d.flow_name}/{d.name}", "schedule": ", ".join(crons) or "on demand",
                     "entrypoint": d.entrypoint, "parameters": d.parameters})
    return rows


def register(deployments: list) -> list[str]:
    """Create or update the deployments in the Prefect API without serving them; returns their ids."""
    return [str(d.apply()) for d in deployments]


def serve(deployments: list, limit: int | None) -> None:
    """Register the deployments and run their flows in this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit)
