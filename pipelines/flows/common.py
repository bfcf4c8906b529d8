"""What more than one flow needs, without Prefect: run an `lct` command as a Ray job.

A flow hands work to a Ray cluster through the Ray Jobs API of its dashboard
(`http://head:8265`): the entrypoint is an `lct` command that joins the cluster with
`--ray-address auto` (the job supervisor sets RAY_ADDRESS for it). The `lct` package must be
installed in the cluster's image (infra/docker/Dockerfile); `files` are uploaded with the job
as its `working_dir` (e.g. the effective config), so the flow runner and the cluster need not
share a filesystem for them. Outputs (`--out`) must be on storage both can see.

Ray 2.60 enables token authentication on the dashboard by default. The client then needs
RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) in the
environment of the process that submits (set before Ray is imported); a cluster started
with RAY_AUTH_MODE=disabled needs nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def is_jobs_address(address: str | None) -> bool:
    """A dashboard URL (http://head:8265) means: submit a Ray job. Anything else is a driver address."""
    return bool(address) and address.startswith(("http://", "https://"))


@dataclass
class JobResult:
    job_id: str
    status: str  # SUCCEEDED | FAILED | STOPPED
    exit_code: int | None  # the entrypoint's exit code, when it ran
    message: str
    logs: str
    dashboard: str

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"


class _LineSplitter:
    """Emit complete lines of a growing log, keep the unfinished tail for later."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.seen, self.partial = emit, 0, ""

    def feed(self, logs: str, final: bool = False) -> None:
        text = self.partial + logs[self.seen :]
        self.seen = len(logs)
        *lines, self.partial = text.split("\n")
        if final and self.partial:
            lines, self.partial = lines + [self.partial], ""
        for line in lines:
            if line.strip():
                self.emit(line)


def run_ray_job(
    dashboard: str,
    entrypoint: str,
    files: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    metadata: dict[str, str] | None = None,
) -> JobResult:
    """Submit `entrypoint` to the cluster whose dashboard is `dashboard`, stream its logs to `log`
    line by line, and wait for it to finish. `files` (name -> text) are uploaded as the job's
    working_dir. The job is stopped if the wait is interrupted or times out."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    workdir = tempfile.mkdtemp(prefix="lct-job-") if files else None
    try:
        if workdir:
            for name, text in files.items():
                Path(workdir, name).write_text(text)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": workdir} if workdir else None,
            metadata=metadata,
        )
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)  # uploaded by submit_job
    log(f"submitted Ray job {job_id} to {dashboard}: {entrypoint}")
    lines = _LineSplitter(log)
    started = time.monotonic()
    try:
        while True:
            status = client.get_job_status(job_id)
            lines.feed(client.get_job_logs(job_id))
            if status.is_terminal():
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"Ray job {job_id} still {status} after {timeout_s:.0f} s; stopped it")
            time.sleep(poll_s)
    except BaseException:  # interrupted, cancelled or timed out: do not leave the job running
        if not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)
        raise
    logs = client.get_job_logs(job_id)
    lines.feed(logs, final=True)
    info = client.get_job_info(job_id)
    assert info.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED), info.status
    return JobResult(
        job_id=job_id,
        status=str(info.status.value),
        exit_code=info.driver_exit_code,
        message=info.message or "",
        logs=logs,
        dashboard=dashboard,
    )
