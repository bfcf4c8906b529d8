"""One writer per output folder: `lct curate --out DIR` and `lct train --out RUN` hold `DIR/lct.lock`.

    @writes_to("out_dir", "lct curate")
    def curate(inputs, out_dir, cfg): ...      # a second writer of out_dir raises OutputBusy

The lock is an exclusive `flock` on `DIR/lct.lock`, held for as long as the writer runs, and
the file names its holder as JSON (pid, host, start time, command). The kernel drops the flock
when the holder dies however it dies (kill -9 included), so a lock file left by a killed run is
stale by construction: the next writer takes it over and says whose it was. A live holder makes
the next writer fail with `OutputBusy` naming its pid and host (the CLI exits 2).

Before locking, the folder is checked to be one this process can write (`OutputUnwritable`:
a file in the way, a read-only filesystem, no permission), so that mistake is a clear error
too and nothing is started. A folder the lock had to create is removed again when the writer
leaves nothing else in it (e.g. its inputs matched nothing).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "lct.lock"


class OutputError(ValueError):
    """An output folder that cannot be written by this run (the CLI exits 2); nothing was written."""


class OutputUnwritable(OutputError):
    """The output path is a file, on a read-only filesystem, or not writable by this user."""


class OutputBusy(OutputError):
    """Another live run writes into the same output folder."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` resolved, created if missing, and proven writable by creating a file in it."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputUnwritable(f"{flag} {path} is a file, not a folder: give the path of a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lct-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise OutputUnwritable(f"{flag} {path}: a parent of it is a file, not a folder") from None
    except OSError as e:
        why = {errno.EROFS: "it is on a read-only filesystem", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOSPC: "the disk is full"}.get(e.errno, e.strerror)
        raise OutputUnwritable(f"{flag} {path} cannot be written: {why} ({type(e).__name__}: {e}). "
                               "Give a folder on a writable disk.") from None
    return path


def _holder(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command, "argv": sys.argv[:8]}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            f" ({holder.get('command', '?')})")


@contextlib.contextmanager
def exclusive(out_dir: str | Path, command: str, flag: str = "--out"):
    """Hold `out_dir/lct.lock` for the duration of the block; yields the folder (resolved, created)."""
    existed = Path(out_dir).expanduser().resolve().is_dir()
    out_dir = writable_dir(out_dir, flag)
    path = out_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read(path)
            raise OutputBusy(
                f"{out_dir} is being written by another run: {_describe(holder)}. Two writers into one output "
                f"lose work: wait for it to finish, or stop it (kill {holder.get('pid', '<pid>')}) and re-run; "
                f"or give another {flag}.", holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file the previous holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        before = _read(path)
        if before.get("pid"):
            log.warning("%s: took over the lock left by a run that is gone (%s)", out_dir, _describe(before))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder(command)) + "\n").encode())
        os.fsync(fd)
        yield out_dir
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding the flock: a waiting opener retries on a fresh file
        os.close(fd)
        if not existed:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only succeeds when the run wrote nothing


def writes_to(param: str, command: str):
    """Decorator: the call holds `exclusive(<argument named param>, command)` while it runs."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            with exclusive(bound.arguments[param], command):
                return fn(*args, **kwargs)

        return locked

    return wrap
