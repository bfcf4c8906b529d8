"""Joining Ray: the one place a command starts a local Ray or connects to a cluster.

Light on purpose (imports only ray): `lct curate` and `lct train` both call it before any
heavy import.

A local Ray started here is stopped on every exit that can be caught: Ray's own atexit hook
runs on a normal exit, Ctrl-C (SIGINT) and, through the handlers installed here, SIGTERM and
SIGHUP. SIGKILL cannot be caught, so the started node's processes are recorded in
LEFTOVERS_DIR/<driver pid>.json; the next command that starts a local Ray stops the processes
of every record whose driver is dead (each checked by its command line naming the session),
so a killed run's raylet, GCS and dashboard do not linger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import ray

log = logging.getLogger(__name__)

LEFTOVERS_DIR = Path(tempfile.gettempdir()) / f"lct-ray-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _names_session(cmdline: str, session: str) -> bool:
    """A Ray node process names its session in an argument (--session-dir=/tmp/ray/<session>, --session-name=...)."""
    return bool(session) and any(arg.startswith("--session") and session in arg for arg in cmdline.split())


def session_processes(session: str) -> list[int]:
    """Pids of live processes (not this one nor its parents) started with the Ray session in an argument."""
    if not session or not Path("/proc").is_dir():
        return []
    mine = _ancestors()
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) not in mine and _names_session(_cmdline(int(e.name)), session)]


def clean_leftovers(directory: Path = LEFTOVERS_DIR) -> list[int]:
    """Stop the Ray processes of local sessions whose driver died (SIGKILL); returns the pids signalled."""
    stopped = []
    for record in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if _alive(info.get("driver", -1)):
            continue  # a live command's own Ray
        session = Path(info.get("session_dir", "")).name
        for pid in sorted(set(info.get("pids", [])) | set(session_processes(session))):
            if pid not in _ancestors() and _alive(pid) and _names_session(_cmdline(pid), session):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
        if stopped:
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in stopped) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in stopped:
                if _alive(pid) and _names_session(_cmdline(pid), session):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            log.warning("stopped %d Ray processes left by a killed run (pid %s, session %s)",
                        len(stopped), info.get("driver"), session)
        record.unlink(missing_ok=True)
    return stopped


def _record_session(directory: Path = LEFTOVERS_DIR) -> Path | None:
    """Write the record of the local Ray this process started (removed when it is stopped)."""
    node = getattr(ray._private.worker, "_global_node", None)  # no public API lists a node's processes
    if node is None:
        return None
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs if p.process is not None]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.json"
    path.write_text(json.dumps({"driver": os.getpid(), "session_dir": node.get_session_dir_path(), "pids": pids}))
    return path


def _stop_on_signals(record: Path | None) -> None:
    """SIGTERM / SIGHUP end the command like Ctrl-C does, so Ray's atexit shutdown runs; then drop the record."""
    import atexit

    if record is not None:
        atexit.register(lambda: record.unlink(missing_ok=True))  # atexit is LIFO: before Ray's shutdown hook
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, stop)


def connect(address: str | None = None, num_cpus: int | None = None, dashboard_host: str = "127.0.0.1") -> str | None:
    """Join `address` (or RAY_ADDRESS), or start a local Ray with its dashboard on `dashboard_host`.

    Reuses a Ray already initialised in this process. Returns the dashboard URL when Ray knows it.
    """
    if ray.is_initialized():
        url = ray._private.worker.get_dashboard_url()  # no public getter once connected
    else:
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            context = ray.init(address=address, logging_level=logging.WARNING)
        else:
            clean_leftovers()
            context = ray.init(
                num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host, logging_level=logging.WARNING
            )
            _stop_on_signals(_record_session())
        url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None
