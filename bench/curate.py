"""Curation throughput with 1 vs 2 Ray workers, and driver memory at 10 vs 100 films.

Each measurement runs `lct`'s `curate()` in a fresh child process with its own local Ray
(`ray.num_cpus` = workers), on tiny synthetic films made once into bench-out/. Printed:

    films/min at 1 and 2 CPUs, and their ratio           (aim >= 1.6x on 2 cores)
    driver peak RSS at 10 and 100 films, and their ratio   (aim: flat, ~1.0x)

The driver's RSS is sampled every 50 ms with psutil (the driver only, not Ray workers).
Run: .venv/bin/python bench/curate.py [--only throughput|memory] [--films-small 10] [--films-large 100]
     [--throughput-films 24]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench-out" / "curate"

CONFIG = {
    "clips": {"width": 64, "height": 64, "fps": 6.0, "keyframes": 2},
    "caption": {"coca": False},
    "shards": {"max_samples": 16},
}


def films(n: int) -> Path:
    """n tiny synthetic films (made once, cached under bench-out/)."""
    from dataprep.synthetic import SynthConfig, make_films

    folder = WORK / f"films-{n}"
    if len(list(folder.glob("*.mp4"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        make_films(
            SynthConfig(n_films=n, seed=1, scenes_per_film=(1, 2), shots_per_scene=(2, 3), shot_seconds=(1.0, 1.5),
                        sizes=[(192, 108)], hard_cases=False),
            folder,
        )
    return folder


def child(folder: str, out: str, cpus: int) -> None:
    """Curate `folder` with a local Ray of `cpus` CPUs; print one JSON line of figures."""
    import psutil

    from dataprep.config import CurateConfig
    from dataprep.run import curate

    me = psutil.Process()
    peak = [me.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], me.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    # "workers" = the width of every stage: film tasks and embedding actors alike
    cfg = CurateConfig.model_validate(CONFIG | {"ray": {"num_cpus": cpus, "embed_actors": cpus}})
    import ray

    os.sched_setaffinity(0, set(range(cpus)))  # Ray and all its workers inherit: really `cpus` cores
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    finished: list[float] = []
    started = time.perf_counter()
    summary = curate([folder], out, cfg, on_film=lambda *_: finished.append(time.perf_counter()))
    wall = time.perf_counter() - started
    done.set()
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else float("nan")
    print(json.dumps({"films": summary.counts["ok"], "wall_s": wall, "steady_films_per_s": steady,
                      "peak_rss_mb": peak[0] / 2**20}))


def measure(folder: Path, cpus: int) -> dict:
    out = WORK / f"out-{folder.name}-{cpus}cpu"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), str(out), str(cpus)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(n: int) -> None:
    tp = films(n)
    one, two = measure(tp, 1), measure(tp, 2)
    rate1, rate2 = 60 * one["films"] / one["wall_s"], 60 * two["films"] / two["wall_s"]
    steady1, steady2 = 60 * one["steady_films_per_s"], 60 * two["steady_films_per_s"]
    print(f"throughput on {n} films, Ray pinned to 1 vs 2 cores (steady = after the first film; all = incl. start-up):")
    print(f"  1 CPU : steady {steady1:6.1f} films/min   all {rate1:6.1f} films/min  ({one['wall_s']:.1f} s)")
    print(f"  2 CPUs: steady {steady2:6.1f} films/min   all {rate2:6.1f} films/min  ({two['wall_s']:.1f} s)")
    print(f"  ratio 2/1 = {steady2 / steady1:.2f}x steady, {rate2 / rate1:.2f}x all   (aim >= 1.6x)")



def memory(n_small: int, n_large: int) -> None:
    small, large = measure(films(n_small), 2), measure(films(n_large), 2)
    print("driver peak RSS (2 CPUs):")
    print(f"  {n_small:4d} films: {small['peak_rss_mb']:7.1f} MiB  ({small['wall_s']:.1f} s)")
    print(f"  {n_large:4d} films: {large['peak_rss_mb']:7.1f} MiB  ({large['wall_s']:.1f} s)")
    print(f"  ratio {n_large}/{n_small} = {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x   (aim: flat, ~1.0x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films-small", type=int, default=10)
    parser.add_argument("--films-large", type=int, default=100)
    parser.add_argument("--throughput-films", type=int, default=24)
    parser.add_argument("--only", choices=["throughput", "memory"], help="Run one of the two measurements.")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "OUT", "CPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    if args.only != "memory":
        throughput(args.throughput_films)
    if args.only != "throughput":
        memory(args.films_small, args.films_large)


if __name__ == "__main__":
    main()
