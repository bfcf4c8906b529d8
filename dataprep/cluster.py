"""Joining Ray: the one place a command starts a local Ray or connects to a cluster.

Light on purpose (imports only ray): `lct curate` and `lct train` both call it before any
heavy import.

A local Ray started here is stopped on every exit that can be caught: Ray's own atexit hook
runs on a normal exit, Ctrl-C (SIGINT) and, through the handlers installed here, SIGTERM and
SIGHUP. SIGKILL cannot be caught, so a watchdog process (dataprep/leftovers.py, stdlib only,
in its own session) waits for the command to be gone and then stops every process of the Ray
session it started, agents included, within seconds. The node is also recorded in
LEFTOVERS_DIR/<driver pid>.json; should the watchdog have been killed too, the next command
that starts a local Ray stops the processes of every record whose driver is dead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import ray

from dataprep import leftovers
from dataprep.leftovers import LEFTOVERS_DIR, clean_leftovers, session_processes  # noqa: F401 (this module's API)

log = logging.getLogger(__name__)


def _record_session(directory: Path = LEFTOVERS_DIR) -> Path | None:
    """Write the record of the local Ray this process started (removed when it is stopped)."""
    node = getattr(ray._private.worker, "_global_node", None)  # no public API lists a node's processes
    if node is None:
        return None
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs if p.process is not None]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.json"
    path.write_text(json.dumps({"driver": os.getpid(), "session_dir": node.get_session_dir_path(), "pids": pids}))
    _start_watchdog(node.get_session_dir_path(), path)
    return path


_watchdog: subprocess.Popen | None = None  # held for the life of this process: its stdin pipe is the tie


def _start_watchdog(session_dir: str, record: Path) -> None:
    """Start leftovers.py's watchdog for this process's local Ray: it outlives a SIGKILL of this process
    (own session, so a signal to our process group does not reach it) and stops the node when we are gone."""
    global _watchdog
    _watchdog = subprocess.Popen(
        [sys.executable, leftovers.__file__, str(os.getpid()), session_dir, str(record)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        close_fds=True)


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


class RayAuthError(ConnectionError):
    """The Ray cluster has token authentication on and this process sent no token, or the wrong one."""


# where Ray reads the client's token, highest precedence first (Ray's token-authentication docs)
TOKEN_SOURCES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")


def token_source() -> str | None:
    """Where Ray will read this process's token from (first of TOKEN_SOURCES that is set), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    home = Path("~/.ray/auth_token").expanduser()
    return str(home) if home.is_file() else None


def auth_failure(err: BaseException, address: str) -> RayAuthError | None:
    """A teaching RayAuthError when joining `address` failed on token authentication, else None.

    Ray 2.60 raises ray.exceptions.AuthenticationError when RAY_AUTH_MODE=token finds no token, and
    ConnectionError("Failed to connect to Ray cluster") when the cluster rejects the call (no token
    sent, or a wrong one); the AuthenticationError ("InvalidAuthToken") is then only in the chain's text.
    """
    from ray.exceptions import AuthenticationError

    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if not any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return None
    get = "print it on the cluster's head node with `ray get-auth-token` (or read ~/.ray/auth_token there)"
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        return RayAuthError(
            f"the Ray cluster at {address} has token authentication on and this process sent no token "
            f"(RAY_AUTH_MODE={mode or 'unset'} here). Set "
            "RAY_AUTH_MODE=token and give the cluster's token as RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file "
            f"holding it>, or in ~/.ray/auth_token; {get}")
    source = token_source()
    if source is None:
        return RayAuthError(
            f"RAY_AUTH_MODE=token but no token was found to join the Ray cluster at {address}: set "
            f"RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file holding it>, or write it to ~/.ray/auth_token; {get}")
    return RayAuthError(
        f"the Ray cluster at {address} rejected the token from {source}: it is not that cluster's token. "
        f"Set RAY_AUTH_TOKEN to the cluster's token ({TOKEN_SOURCES[0]} wins over {TOKEN_SOURCES[1]} and "
        f"{TOKEN_SOURCES[2]}); {get}")


def connect(address: str | None = None, num_cpus: int | None = None, dashboard_host: str = "127.0.0.1") -> str | None:
    """Join `address` (or RAY_ADDRESS), or start a local Ray with its dashboard on `dashboard_host`.

    Reuses a Ray already initialised in this process. Returns the dashboard URL when Ray knows it.
    Raises RayAuthError (what to set) when the cluster's token authentication refuses this process.
    """
    if ray.is_initialized():
        url = ray._private.worker.get_dashboard_url()  # no public getter once connected
    else:
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            try:
                context = ray.init(address=address, logging_level=logging.WARNING)
            except Exception as err:
                if (auth := auth_failure(err, address)) is not None:
                    raise auth from None
                raise
        else:
            clean_leftovers()
            context = ray.init(  # "local": never join a cluster `ray start` left on this machine
                address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host, logging_level=logging.WARNING
            )
            _stop_on_signals(_record_session())
        url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None
