"""A log file per run: OUT/logs/<command>-<UTC time>.log for `lct curate|train|generate|eval|demo`.

    @app.command()
    @logged("curate")              # under @app.command(): typer sees the command's own signature
    def curate(..., out: Path, ...): ...

The file gets every Python log record at INFO and above (lct's own loggers, DeepSpeed, Ray
Train's driver), the command line at the top and the exit code at the bottom; a command that
failed unexpectedly leaves its traceback there. It is opened on the first record, so a command
refused for bad usage (exit 2 before anything ran) leaves no folder behind. What the terminal
shows stays as it was: WARNING and above (INFO with `lct curate -v`). The Ray workers' own logs
stay in Ray's session folder (/tmp/ray/session_latest/logs) and the Ray dashboard.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import typer

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog(logging.Handler):
    """A logging handler writing OUT/logs/<command>-<time>.log, opened on the first record."""

    def __init__(self, out: Path, command: str, parameters: dict | None = None):
        super().__init__(logging.INFO)
        self.command, self.parameters = command, parameters or {}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = Path(out).absolute() / "logs" / f"{command}-{stamp}.log"
        self.stream, self.broken = None, False
        self.setFormatter(logging.Formatter(FORMAT))

    def _open(self) -> None:
        from importlib.metadata import version

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.path.open("a", encoding="utf-8")
        params = " ".join(f"{k}={v}" for k, v in self.parameters.items() if v is not None)
        self.stream.write(f"# lct {version('lct')} {self.command}: {shlex.join(['lct', *sys.argv[1:]])}\n"
                          f"# parameters: {params}\n# cwd {os.getcwd()}\n")

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            if self.stream is None:
                self._open()
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except OSError:  # OUT unwritable / a file / disk full: the command itself says so; the log stops
            self.broken = True

    def finish(self, code: int) -> Path | None:
        """Write the exit code and close; returns the file, or None when nothing ran (usage error, no record)."""
        if self.broken or (self.stream is None and code == 2):
            return None
        try:
            if self.stream is None:
                self._open()
            self.stream.write(f"# exit code {code}\n")
            self.stream.close()
        except OSError:
            return None
        return self.path


def terminal_level(level: int) -> None:
    """Set what the terminal shows (the run log always gets INFO)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "lct_terminal", False):
            handler.setLevel(level)


def logged(command: str):
    """Decorate an `lct` command that has an `out` parameter: log the run into OUT/logs/."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            root = logging.getLogger()
            if not any(getattr(h, "lct_terminal", False) for h in root.handlers):
                terminal = logging.StreamHandler()
                terminal.setLevel(logging.WARNING)
                terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
                terminal.lct_terminal = True
                root.addHandler(terminal)
            handler = RunLog(kwargs["out"], command, kwargs)
            root.addHandler(handler)
            root.setLevel(min(root.level or logging.WARNING, logging.INFO))
            code = 0
            try:
                return fn(*args, **kwargs)
            except typer.Exit as e:
                code = e.exit_code
                raise
            except BaseException:
                code = 1
                logging.getLogger(f"lct.{command}").exception("lct %s failed", command)
                raise
            finally:
                root.removeHandler(handler)
                handler.finish(code)

        return run

    return wrap
