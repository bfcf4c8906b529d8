"""Curation throughput per CPU core, stage by stage (the inputs of infra/SCALING.md).

The whole process is pinned to ONE core (os.sched_setaffinity before torch or PyAV start any
thread; torch and FFmpeg may still run threads, but they share that core), so every figure is
"per core". Each cell is the best (minimum) of REPEATS runs, timed both as wall seconds and as
CPU seconds (user + sys of this process); on a shared machine the CPU seconds are the better
per-core cost, the wall seconds show how loaded the core was. Films:

    testvideo.mp4   ../shared/data, 1280x720 H.264, 29.97 fps, 720 frames (24 s)
    synth-000.mp4   dataprep.synthetic.make_films, one film at --synth-size (default 640x360), cached
                    under bench-out/stages/

Stages (the code paths `lct curate` runs, default configs):

    decode     our detector's decode path alone: threaded PyAV decode + swscale downscale to
               ~256 px wide BGR (dataprep.shots.downscaled_frames), nothing done per frame
    detect     dataprep.shots.detect_shots (ContentDetector + luma/motion/thumbnails + transitions)
    reencode   dataprep.keyframes.extract_clips over every detected shot: a second full decode,
               resize + crop to 256x256, x264 veryfast re-encode at 8 fps, 3 keyframes per shot
    clip       dataprep.embed.ClipEmbedder, open_clip ViT-B-32 (random init: speed only) on
               256x256 keyframes, batch 32, incl. preprocessing
    coca       dataprep.caption.CocaCaptioner, coca_ViT-B-32 (random init), default seq_len 12,
               top-k 1, batch 8 (skip with --no-coca); random weights never emit end-of-text, so
               every caption runs the full 12 tokens (an upper bound for the same settings)

Printed per film: frames/s, source megapixels/s, film seconds per CPU second (x realtime), and
for the models images/s or seconds per caption. A last line is JSON with every figure.

    .venv/bin/python bench/stages.py [--core N] [--no-coca] [--repeats 2] [--films PATH ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Pin before anything starts a thread (torch's pools, FFmpeg's decoder threads inherit it).
if __name__ == "__main__":
    _core = max(os.sched_getaffinity(0))
    for _i, _a in enumerate(sys.argv):
        if _a == "--core" and _i + 1 < len(sys.argv):
            _core = int(sys.argv[_i + 1])
    os.sched_setaffinity(0, {_core})
    os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from dataprep.config import CaptionConfig, ClipConfig, EmbedConfig, ShotsConfig  # noqa: E402
from dataprep.keyframes import extract_clips  # noqa: E402
from dataprep.shots import detect_shots, downscaled_frames, scaled_size  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench-out" / "stages"


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def best_of(run, repeats: int) -> tuple[float, float, object]:
    """(min wall s, min CPU s, last result) of `run()` over `repeats` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), cpu_seconds()
        out = run()
        walls.append(time.perf_counter() - w)
        cpus.append(cpu_seconds() - c)
    return min(walls), min(cpus), out


def decode_only(path: Path) -> int:
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = scaled_size(stream.width, stream.height, ShotsConfig().downscale_width)
        with contextlib.closing(downscaled_frames(container, stream, width, height, path)) as frames:
            for _ in frames:
                n += 1
    return n


def synth_film(size: tuple[int, int]) -> Path:
    from dataprep.synthetic import SynthConfig, make_films

    folder = WORK / f"synth-{size[0]}x{size[1]}"
    films = sorted(folder.glob("*.mp4"))
    if not films:
        films = make_films(SynthConfig(n_films=1, seed=0, sizes=[size], fps=["24"]), folder)
    return films[0]


def film_stages(path: Path, repeats: int) -> dict:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        width, height = s.width, s.height
    wall, cpu, n = best_of(lambda: decode_only(path), repeats)
    det_wall, det_cpu, det = best_of(lambda: detect_shots(path), repeats)
    duration = det.n_frames / det.fps
    spans = det.shots
    enc_wall, enc_cpu, clips = best_of(lambda: extract_clips(str(path), spans, det.fps, ClipConfig()), repeats)
    mpix = width * height * n / 1e6
    row = {"film": path.name, "size": f"{width}x{height}", "frames": n, "seconds": round(duration, 2),
           "shots": len(spans)}
    for name, w, c in (("decode", wall, cpu), ("detect", det_wall, det_cpu), ("reencode", enc_wall, enc_cpu)):
        row[name] = {"wall_s": round(w, 3), "cpu_s": round(c, 3), "frames_per_cpu_s": round(n / c, 1),
                     "mpix_per_cpu_s": round(mpix / c, 1), "film_s_per_cpu_s": round(duration / c, 2)}
    row["reencode"]["cpu_s_per_shot"] = round(enc_cpu / len(spans), 3)
    keyframes = [clip.keyframes for clip in clips if clip is not None]
    return row, keyframes


def clip_stage(keyframes: list[np.ndarray], repeats: int) -> dict:
    import torch

    from dataprep.embed import ClipEmbedder

    torch.set_num_threads(1)
    embedder = ClipEmbedder(EmbedConfig(model="ViT-B-32", batch_size=32))
    shots = (keyframes * 64)[:22]                        # 22 shots x 3 keyframes = 66 images, 3 batches
    images = sum(len(k) for k in shots)
    embedder(shots[:2])                                  # warm-up
    wall, cpu, _ = best_of(lambda: embedder(shots), repeats)
    return {"images": images, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_cpu_s": round(images / cpu, 2), "images_per_wall_s": round(images / wall, 2)}


def coca_stage(keyframes: list[np.ndarray]) -> dict:
    import torch

    from dataprep.caption import CocaCaptioner

    torch.set_num_threads(1)
    start = time.perf_counter()
    captioner = CocaCaptioner(CaptionConfig())
    load = time.perf_counter() - start
    images = [k[len(k) // 2] for k in (keyframes * 8)[:8]]  # one keyframe per shot, one batch of 8
    wall, cpu, _ = best_of(lambda: captioner(images), 1)
    return {"captions": len(images), "load_s": round(load, 1), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_s_per_caption": round(cpu / len(images), 2), "wall_s_per_caption": round(wall / len(images), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", type=int, help="CPU to pin to (default: the highest allowed).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synth-size", type=int, nargs=2, default=(640, 360), metavar=("W", "H"))
    parser.add_argument("--no-coca", action="store_true", help="Skip the CoCa caption stage (~15 s).")
    parser.add_argument("--films", nargs="+", type=Path, metavar="PATH",
                        help="Measure these films instead (e.g. a sample of the real corpus).")
    args = parser.parse_args()
    print(f"pinned to core(s) {sorted(os.sched_getaffinity(0))}, load average at start "
          f"{os.getloadavg()[0]:.2f} (other processes share this machine); best of {args.repeats}")

    result = {"films": [], "load_start": os.getloadavg()[0]}
    keyframes: list[np.ndarray] = []
    for path in args.films or (SHARED / "testvideo.mp4", synth_film(tuple(args.synth_size))):
        row, keys = film_stages(path, args.repeats)
        result["films"].append(row)
        keyframes += keys
    print(f"\n{'film':<16}{'size':>10}{'frames':>7}{'shots':>6}  "
          f"{'stage':<9}{'frames/CPU s':>13}{'MPix/CPU s':>11}{'x realtime':>11}{'wall/CPU':>9}")
    for row in result["films"]:
        for stage in ("decode", "detect", "reencode"):
            cell = row[stage]
            print(f"{row['film']:<16}{row['size']:>10}{row['frames']:>7}{row['shots']:>6}  {stage:<9}"
                  f"{cell['frames_per_cpu_s']:>13.0f}{cell['mpix_per_cpu_s']:>11.1f}"
                  f"{cell['film_s_per_cpu_s']:>11.2f}{cell['wall_s'] / cell['cpu_s']:>9.2f}")
        print(f"{'':<41}re-encode CPU s per shot: {row['reencode']['cpu_s_per_shot']:.3f}")

    result["clip"] = clip_stage(keyframes, args.repeats)
    c = result["clip"]
    print(f"\nCLIP ViT-B-32 (random init), 1 thread: {c['images_per_cpu_s']:.1f} images/CPU s "
          f"({c['images_per_wall_s']:.1f} images/wall s, {c['images']} images, batch 32)")
    if not args.no_coca:
        result["coca"] = coca_stage(keyframes)
        c = result["coca"]
        print(f"CoCa ViT-B-32 (random init), 1 thread, seq_len 12, batch 8: {c['cpu_s_per_caption']:.2f} CPU s "
              f"per caption ({c['wall_s_per_caption']:.2f} wall s), model load {c['load_s']:.1f} s")
    result["load_end"] = os.getloadavg()[0]
    print(f"\nload average at end {result['load_end']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
