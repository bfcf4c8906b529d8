"""A separate Ray head as `ray start --head` makes it (dashboard + Jobs API), for the tests that
need a real cluster process rather than the session's in-process local Ray."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port", "node-manager-port",
         "object-manager-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(num_cpus: int, env: dict[str, str], headers: dict[str, str] | None = None,
             dashboard: bool = True) -> Iterator[str]:
    """`ray start --head --block` with `env` over this environment (less RAY_ADDRESS and RAY_AUTH_*);
    yields the dashboard URL once GET /api/version answers with `headers`, or without the dashboard
    (`dashboard=False`) the GCS address once the node says it started.

    Every port is chosen free (other Ray instances may run on this machine) and the session lives
    in its own short temp dir (Ray's unix sockets live under it). Stopped by signalling our
    `ray start --block` process (never `ray stop`: it stops every Ray on the machine).
    """
    bin_dir = Path(sys.executable).parent
    temp_dir = tempfile.mkdtemp(prefix="lct-ray-", dir="/tmp")
    ports = {name: free_port() for name in PORTS}
    command = [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus), "--disable-usage-stats",
               "--include-dashboard", str(dashboard).lower(), "--dashboard-host", "127.0.0.1", "--temp-dir", temp_dir]
    for name, port in ports.items():
        command += [f"--{name}", str(port)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    full_env = base | {"RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"} | env
    log = open(Path(temp_dir) / "ray-start.log", "w")
    proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if dashboard:
                    urllib.request.urlopen(urllib.request.Request(f"{url}/api/version", headers=headers or {}), timeout=5)
                    break
                if "Ray runtime started" in Path(log.name).read_text():
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(1)
        yield url if dashboard else f"127.0.0.1:{ports['port']}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
