"""One writer per output folder (dataprep/lock.py), with real processes: a live holder refuses a second
writer (naming its pid), a holder killed with SIGKILL leaves a stale lock that the next writer takes over,
and outputs that cannot be written are clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataprep.lock import LOCK_NAME, OutputBusy, OutputUnwritable, exclusive, writable_dir

ROOT = Path(__file__).resolve().parents[2]

HOLD = textwrap.dedent("""
    import sys, time
    from dataprep.lock import exclusive
    with exclusive(sys.argv[1], "test holder"):
        print("held", flush=True)
        time.sleep(120)
""")

TRY = textwrap.dedent("""
    import logging, sys
    from dataprep.lock import OutputBusy, exclusive
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        with exclusive(sys.argv[1], "test writer"):
            print("acquired", flush=True)
    except OutputBusy as e:
        print(f"busy: {e}", flush=True)
        sys.exit(2)
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def hold(out: Path) -> subprocess.Popen:
    """A real process that holds out's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def try_lock(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(out)], capture_output=True, text=True, env=_env(), timeout=60)


def test_a_second_writer_is_refused_with_the_holders_pid_then_a_killed_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "ds"
    holder = hold(out)
    try:
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] and info["started"] and info["command"] == "test holder"
        second = try_lock(out)
        assert second.returncode == 2, second
        assert f"pid {holder.pid}" in second.stdout and "another run" in second.stdout
        with pytest.raises(OutputBusy) as busy:  # and in this process too
            with exclusive(out, "me"):
                pass
        assert busy.value.holder["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # the killed run's lock is left behind
    third = try_lock(out)
    assert third.returncode == 0 and "acquired" in third.stdout, third
    assert f"took over the lock left by a run that is gone (pid {holder.pid}" in third.stderr
    assert not (out / LOCK_NAME).exists()  # released when the writer finished


def test_the_lock_is_released_on_exceptions_and_reentry_works(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with exclusive(out, "a"):
            raise RuntimeError("boom")
    with exclusive(out, "b") as held:
        assert held == out.resolve() and json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not out.exists()  # a folder the lock created and nobody wrote into is removed again


def test_an_output_that_is_a_file_is_unwritable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputUnwritable, match="is a file, not a folder"):
        writable_dir(tmp_path / "file")
    with pytest.raises(OutputUnwritable, match="a parent of it is a file"):
        writable_dir(tmp_path / "file" / "sub")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a read-only filesystem")
def test_an_output_on_a_read_only_filesystem_is_unwritable(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    code = ("import sys; from dataprep.lock import OutputUnwritable, writable_dir\n"
            "try: writable_dir(sys.argv[1])\nexcept OutputUnwritable as e: print(e); sys.exit(2)")
    script = f"mount -t tmpfs -o ro none {mnt} && exec {sys.executable} -c '{code}' {mnt}/out"
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=_env(), timeout=60)
    if "mount" in result.stderr and result.returncode != 2:
        pytest.skip(f"cannot mount a read-only tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 2 and "read-only filesystem" in result.stdout, result
