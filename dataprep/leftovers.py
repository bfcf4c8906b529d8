"""The processes of a local Ray session, found and stopped once the command that started it is gone.

Stdlib only on purpose: `watch` runs as its own small process (started by dataprep/cluster.py
right after `ray.init`), by file path, without importing Ray or the package.

    python leftovers.py DRIVER_PID SESSION_DIR RECORD
        the watchdog: waits until DRIVER_PID is gone (its stdin, a pipe the driver holds, reaches
        EOF, or the pid is dead), then stops every live process of the session and removes RECORD.

A process belongs to a session when its command line names the session (`--session-dir=...`,
`--session-name=...`: raylet, gcs_server, dashboard, log monitor) or it holds a file open under
the session dir (Ray workers and the dashboard / runtime-env agents rename themselves to
`ray::...`; after a SIGKILL of the driver those two agents otherwise live on, ~230 MB).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

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


def _holds_session_file(pid: int, session: str) -> bool:
    """The process has a file open under the session dir (its logs, sockets); False when it cannot be read."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if f"/{session}/" in os.readlink(fd):
                return True
    return False


def in_session(pid: int, session: str) -> bool:
    return bool(session) and (_names_session(_cmdline(pid), session) or _holds_session_file(pid, session))


def session_processes(session: str) -> list[int]:
    """Pids of live processes (not this one nor its parents) of the Ray session `session`."""
    if not session or not Path("/proc").is_dir():
        return []
    mine = _ancestors()
    return sorted(int(e.name) for e in Path("/proc").iterdir()
                  if e.name.isdigit() and int(e.name) not in mine and in_session(int(e.name), session))


def stop_session(session: str, pids: list[int] = (), grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process of the session (and `pids` still in it), SIGKILL what is left after grace_s."""
    mine = _ancestors()
    stopped = [p for p in sorted(set(pids) | set(session_processes(session)))
               if p not in mine and _alive(p) and in_session(p, session)]
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in stopped:
        if _alive(pid) and in_session(pid, session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stopped


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
        these = stop_session(session, info.get("pids", []))
        if these:
            log.warning("stopped %d Ray processes left by a killed run (pid %s, session %s)",
                        len(these), info.get("driver"), session)
        stopped += these
        record.unlink(missing_ok=True)
    return stopped


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def watch(driver: int, session_dir: str, record: Path, poll_s: float = 0.5) -> list[int]:
    """Block until `driver` is gone, then stop what is left of its session and remove its record."""
    started = _start_time(driver)
    while started is not None and _start_time(driver) == started:  # a reused pid has another start time
        ready, _, _ = select.select([sys.stdin], [], [], poll_s)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break  # EOF: the driver's end of the pipe is closed, it exited or was killed
    try:
        pids = json.loads(record.read_text()).get("pids", [])
    except (OSError, ValueError):
        pids = []  # a clean exit removed it; Ray's own shutdown stopped the node, except what it misses
    stopped = stop_session(Path(session_dir).name, pids)
    record.unlink(missing_ok=True)
    return stopped


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
