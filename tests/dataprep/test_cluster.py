"""A local Ray started by a command does not outlive it: SIGTERM stops it, a SIGKILLed driver's node is
stopped by its watchdog within seconds, and leftovers are stopped by the next command (dataprep/cluster.py,
dataprep/leftovers.py), with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dataprep import cluster

ROOT = Path(__file__).resolve().parents[2]


def _fake_node_process(session: str) -> subprocess.Popen:
    """A live process that names a Ray session in its arguments, as raylet / gcs_server do."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--session-dir=/tmp/ray/{session}"])


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_dead_driver_are_stopped_and_a_live_drivers_are_kept(tmp_path):
    dead_session, live_session = f"session_lcttest_{uuid.uuid4().hex}", f"session_lcttest_{uuid.uuid4().hex}"
    orphan, kept = _fake_node_process(dead_session), _fake_node_process(live_session)
    try:
        (tmp_path / "1.json").write_text(json.dumps(
            {"driver": _dead_pid(), "session_dir": f"/tmp/ray/{dead_session}", "pids": []}))  # found by its cmdline
        (tmp_path / "2.json").write_text(json.dumps(
            {"driver": os.getpid(), "session_dir": f"/tmp/ray/{live_session}", "pids": [kept.pid]}))
        time.sleep(0.5)  # the fake processes have exec'd
        stopped = cluster.clean_leftovers(tmp_path)
        assert stopped == [orphan.pid]
        assert orphan.wait(timeout=15) is not None
        assert kept.poll() is None  # a live command's Ray is not touched
        assert not (tmp_path / "1.json").exists() and (tmp_path / "2.json").exists()
    finally:
        for proc in (orphan, kept):
            proc.kill()
            proc.wait()


DRIVER = """
import sys, time, ray
from dataprep.cluster import connect
connect(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
print(ray._private.worker._global_node.get_session_dir_path(), flush=True)
time.sleep(300)
"""


@pytest.mark.slow  # starts a local Ray
def test_sigterm_stops_the_local_ray_the_command_started():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env)
    try:
        session = Path(driver.stdout.readline().strip()).name
        assert session.startswith("session_"), session
        assert cluster.session_processes(session)  # raylet, gcs_server ... are up
        assert (cluster.LEFTOVERS_DIR / f"{driver.pid}.json").is_file()
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=60)  # it exits (through Ray's SIGTERM handler or lct's), whatever its exit code
        deadline = time.monotonic() + 30
        while cluster.session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.session_processes(session) == []  # no raylet / GCS / worker of its session lingers
        cluster.clean_leftovers()  # the next command drops the record of the dead driver, if one is left
        assert not (cluster.LEFTOVERS_DIR / f"{driver.pid}.json").exists()
    finally:
        driver.kill()
        driver.wait()


@pytest.mark.slow  # starts a local Ray
def test_kill_9_of_the_driver_leaves_no_process_of_its_ray_alive():
    """Issue 15.8: after `kill -9` of a command that started a local Ray, its dashboard and runtime-env agents
    (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, reparented to init) lived on for minutes; the watchdog
    stops every process of the session within seconds, found by command line or by a file open in the session."""
    from dataprep import leftovers

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env)
    session = ""
    try:
        session = Path(driver.stdout.readline().strip()).name
        assert session.startswith("session_"), session
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                "Agent" in leftovers._cmdline(p) for p in leftovers.session_processes(session)):
            time.sleep(0.2)
        before = {p: leftovers._cmdline(p).split()[0] for p in leftovers.session_processes(session)}
        assert any("DashboardAgent" in c for c in before.values()), before  # the agents are found (by their files)
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 15
        while leftovers.session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: leftovers._cmdline(p)[:60] for p in leftovers.session_processes(session)}
        assert left == {}, f"still alive 15 s after kill -9 of the driver: {left}"
        assert not (cluster.LEFTOVERS_DIR / f"{driver.pid}.json").exists()
    finally:
        driver.kill()
        driver.wait()
        leftovers.stop_session(session, grace_s=1.0)
