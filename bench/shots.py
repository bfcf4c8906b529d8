"""Shot detection speed: our `detect_shots` against PySceneDetect itself and against the decoder.

Measured side by side in one run, on the same files (testvideo.mp4, fades.mp4 and two synthetic
films), each measurement repeated 3 times and the median taken; frames/s = decoded frames /
wall seconds. The repeats are interleaved (round r runs every method on every file) so that a
change in machine load hits all methods alike; CPU ms/frame (user + sys, of this process or of
the CLI child) is printed too, as it barely depends on the load of a shared machine:

    ours          dataprep.shots.detect_shots (ContentDetector defaults, threaded PyAV decode,
                  swscale downscale to ~256 px wide, luma/motion stats in the same pass)
    api-pyav      PySceneDetect's Python API in this process: open_video(backend="pyav")
                  + SceneManager + ContentDetector() (auto-downscale to ~256 px, like ours)
    cli-opencv    `scenedetect -q -i FILE detect-content` as a subprocess (default backend)
    cli-pyav      `scenedetect -q -i FILE -b pyav detect-content` as a subprocess
    decode-only   our decode path alone (threaded PyAV decode + the same swscale downscale to
                  BGR in the same worker thread), nothing done per frame: the ceiling

CLI times include interpreter start-up and imports (nothing is subtracted); the start-up alone
(`scenedetect version`) is printed too so the reader can judge. The ratios at the end are over
the whole set: ours/cli (aim >= 1.0) and ours/decode-only (aim >= 0.7).

    .venv/bin/python bench/shots.py
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from dataprep.config import ShotsConfig
from dataprep.shots import detect_shots, downscaled_frames, scaled_size

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCENEDETECT = str(Path(sys.executable).with_name("scenedetect"))
REPEATS = 3


def cpu_seconds() -> float:
    """User + sys CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call of `run()`."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def ours(path: Path) -> None:
    detect_shots(path, ShotsConfig())


def api_pyav(path: Path) -> None:
    from scenedetect import ContentDetector, SceneManager, open_video

    manager = SceneManager()
    manager.add_detector(ContentDetector())
    manager.detect_scenes(open_video(str(path), backend="pyav"))


def cli(*backend: str):
    def run(path: Path) -> None:
        subprocess.run([SCENEDETECT, "-q", "-i", str(path), *backend, "detect-content"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run


def decode_only(path: Path) -> None:
    """Our decode path exactly (same threads, downscale, worker thread), with nothing done per frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = scaled_size(stream.width, stream.height, ShotsConfig().downscale_width)
        with contextlib.closing(downscaled_frames(container, stream, width, height, path)) as frames:
            for _ in frames:
                pass


METHODS = {
    "ours": ours,
    "api-pyav": api_pyav,
    "cli-opencv": cli(),
    "cli-pyav": cli("-b", "pyav"),
    "decode-only": decode_only,
}


def films(tmp: Path) -> list[Path]:
    paths = [SHARED / "testvideo.mp4", SHARED / "fades.mp4"]
    try:
        from dataprep.synthetic import SynthConfig, make_films
    except ImportError as e:  # the synthetic film maker is optional for this benchmark
        print(f"(no synthetic films: {e})")
        return paths
    return paths + make_films(SynthConfig(n_films=2, seed=0), tmp)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = films(Path(tmp))
        frames = {p: detect_shots(p).n_frames for p in paths}  # also warms the page cache
        startup = [timed(lambda: subprocess.run([SCENEDETECT, "version"], check=True, stdout=subprocess.DEVNULL))
                   for _ in range(REPEATS)]
        runs = {(n, p): [] for n in METHODS for p in paths}  # (method, film) -> [(wall, cpu)] per round
        for _ in range(REPEATS):
            for name, run in METHODS.items():
                for p in paths:
                    runs[name, p].append(timed(lambda: run(p)))
    wall = {key: statistics.median(w for w, _ in r) for key, r in runs.items()}
    cpu = {key: statistics.median(c for _, c in r) for key, r in runs.items()}
    print(f"median of {REPEATS} interleaved runs; CLI start-up alone (`scenedetect version`): "
          f"{statistics.median(w for w, _ in startup):.2f} s wall, {statistics.median(c for _, c in startup):.2f} s CPU\n")

    total_frames = sum(frames.values())
    fps = {n: total_frames / sum(wall[n, p] for p in paths) for n in METHODS}
    for title, cell in (("frames/s (wall)", lambda n, p: f"{frames[p] / wall[n, p]:.0f}"),
                        ("CPU ms/frame", lambda n, p: f"{1e3 * cpu[n, p] / frames[p]:.2f}")):
        print(f"{title:<22}{'frames':>7}" + "".join(f"{name:>13}" for name in METHODS))
        for p in paths:
            print(f"{p.name:<22}{frames[p]:>7}" + "".join(f"{cell(n, p):>13}" for n in METHODS))
        print()
    print(f"{'all, frames/s (wall)':<22}{total_frames:>7}" + "".join(f"{fps[n]:>13.0f}" for n in METHODS))

    print()
    for name in ("api-pyav", "cli-opencv", "cli-pyav"):
        print(f"ours / {name:<12} {fps['ours'] / fps[name]:5.2f}   (aim >= 1.0)")
    print(f"ours / {'decode-only':<12} {fps['ours'] / fps['decode-only']:5.2f}   (aim >= 0.7)")


if __name__ == "__main__":
    if shutil.which(SCENEDETECT) is None:
        sys.exit(f"scenedetect CLI not found at {SCENEDETECT}: run this with the project's .venv/bin/python")
    main()
