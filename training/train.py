"""The training loop of one worker: the same function under Ray Train, torchrun or `deepspeed`.

    train_worker({"config": TrainConfig dict, "run_dir": "...", "until": None, "ray": True})

Read top to bottom: 1. distributed setup, 2. find the resume point, 3. model + engine + data,
4. the loop (forward / engine.backward / engine.step), metrics, checkpoints and samples,
5. the export. Rank 0 logs. Under Ray Train checkpoints go through `ray.train.report` (Ray
keeps the newest K and restores the latest after a worker failure); under a plain launcher
they are written to RUN/checkpoints/step-XXXXXX.tmp and renamed when complete.

Plain launchers (Slurm etc.), one process per GPU:
    torchrun --nnodes N --nproc-per-node 8 -m training.train RUN
    deepspeed --num_gpus 8 training/train.py RUN
RUN/config.yaml must exist (`lct train ... --dry-run` writes it without training).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from model import Scene, Shot, TextEncoder, build_codec, collate
from model.lct import unpack
from model.sampling import negative_features, null_scene

from .cache import EncodingCache
from .config import TrainConfig
from .data import SceneLoader, SceneStream
from .engine import (
    EMA, build_model, export, init_engine, load_checkpoint, make_universal, prune_checkpoints, read_state,
    write_checkpoint,
)
from .metrics import MetricsWriter, matmul_peak, peak_memory_mb, rank_state_mb, read_metrics, train_step_flops
from .objective import add_noise, bucket_losses, drop_prompts, flow_loss, model_timesteps, sample_timesteps
from .resume import choose_checkpoint
from .sequence_parallel import UlyssesAttention, shard_batch, sharded_flow_loss, single_device_attention, sp_group
from .validation import validation_scene, write_samples

log = logging.getLogger("lct.train")


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """The generator of one micro-batch's timesteps and noise: a function of where we are, not of history."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}-{step}-{rank}-{micro}".encode()))


def reduce_over_ranks(loss: torch.Tensor, skipped: int) -> tuple[float, int]:
    """(mean of the ranks' losses, sum of the ranks' skipped samples): one all-reduce, every rank gets both.

    A corrupt sample skipped on rank 1 counts in `skipped_samples` as much as one on rank 0.
    """
    both = torch.stack([loss.detach().double().reshape(()), torch.tensor(float(skipped), dtype=torch.float64)])
    dist.all_reduce(both)
    return float(both[0]) / dist.get_world_size(), int(round(float(both[1])))


@contextlib.contextmanager
def resume_point(run_dir: Path, under_ray: bool, resume_from: str | None = None):
    """The checkpoint dir to resume from (None for a fresh run). Under Ray: the latest one Ray Train holds
    (reported by this run, or from its run snapshot), else `resume_from` (the driver's choice when Ray's
    latest was damaged, training/resume.py). A plain launcher takes the newest intact one itself."""
    if under_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield Path(resume_from) if resume_from else None
        else:
            with checkpoint.as_directory() as directory:
                yield Path(directory)
    else:                                  # rank 0 checks the checkpoints once; every rank takes its choice
        choice = [None]
        if dist.get_rank() == 0:
            chosen, passed_over = choose_checkpoint(run_dir / "checkpoints")
            for name, why in passed_over:
                log.warning("checkpoint %s passed over: %s", name, why)
            choice = [str(chosen) if chosen else None]
        dist.broadcast_object_list(choice, src=0)
        yield Path(choice[0]) if choice[0] else None


def save(engine, run_dir: Path, step: int, state: dict, ema, metrics: dict, cfg: TrainConfig, under_ray: bool) -> None:
    name = f"step-{step:06d}"
    if under_ray:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory(prefix="lct-ckpt-") as tmp:
            write_checkpoint(engine, tmp, state, ema)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
        return
    checkpoints = run_dir / "checkpoints"
    tmp = checkpoints / f"{name}.tmp"
    write_checkpoint(engine, tmp, state, ema)            # ends with a barrier: every rank has written
    if dist.get_rank() == 0:
        if (checkpoints / name).exists():
            import shutil

            shutil.rmtree(checkpoints / name)
        tmp.rename(checkpoints / name)
        prune_checkpoints(checkpoints, cfg.schedule.keep_checkpoints)
    dist.barrier()


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed's CPU backend from JIT-building its shared-memory all-reduce op at init_distributed
    (a minute of C++ compiling on a fresh machine, the first thing `make demo` waited for). The op
    serves only `inference_all_reduce`; ZeRO training reduces through the process group (gloo), and
    inference_all_reduce falls back to it when the op is absent. DeepSpeed builds an op only when
    `deepspeed.ops.__compatible_ops__` marks it compatible."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def train_worker(args: dict) -> None:
    cfg = TrainConfig.model_validate(args["config"])
    run_dir = Path(args["run_dir"])
    under_ray = bool(args.get("ray"))
    until = min(args.get("until") or cfg.schedule.steps, cfg.schedule.steps)
    eng, data, sched = cfg.engine, cfg.data, cfg.schedule

    # 1. Distributed setup (Ray Train / torchrun / deepspeed set RANK, WORLD_SIZE, MASTER_*).
    torch.set_num_threads(eng.cpus_per_worker)
    if not eng.gpus_per_worker:
        skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if eng.gpus_per_worker else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if eng.gpus_per_worker else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    sp = sp_group(eng.sequence_parallel)             # SP groups of P consecutive ranks; data by sp.dp_rank

    # 2. Resume point: the latest checkpoint; another world size goes through a universal checkpoint.
    with resume_point(run_dir, under_ray, args.get("resume_from")) as ckpt:
        state = read_state(ckpt) if ckpt else None
        universal = bool(state) and state["world_size"] != world
        if universal:
            if rank == 0:
                log.info("resuming %s saved by %d workers on %d: converting to a universal checkpoint",
                         ckpt.name, state["world_size"], world)
                make_universal(ckpt)
            dist.barrier()

        # 3. Model, engine, data.
        lct_cfg = cfg.arch()
        torch.manual_seed(sched.seed)                     # the same initial weights on every rank and run
        model = build_model(cfg)
        if sp.degree > 1:                                 # heads % P was checked with the config
            model.set_attention(UlyssesAttention(sp.group))
        engine = init_engine(model, cfg, world, universal)
        ema = EMA(engine.module, cfg.optim.ema) if cfg.optim.ema else None
        if ckpt:
            state = load_checkpoint(engine, ckpt, universal, ema)
            if rank == 0:
                log.info("resumed from %s at step %d", ckpt, state["step"])
    step = state["step"] if state else 0
    positions = (state or {}).get("data", {})             # per DP rank (SP ranks read the same scenes)
    saved_dp = state["world_size"] // state.get("sequence_parallel", 1) if state else None
    if saved_dp != sp.dp_world or str(sp.dp_rank) not in positions:   # DP ranks changed: next epoch afresh
        epoch = max((p["epoch"] for p in positions.values()), default=-1) + 1 if positions else 0
        position = {"epoch": epoch, "index": 0}
    else:
        position = positions[str(sp.dp_rank)]

    cache = (EncodingCache(data.cache_dir or run_dir / "cache", data.codec_config(), data.text_config())
             if data.cache else None)                      # latents + prompt features encoded once
    text = TextEncoder(cache.text_config if cache else data.text_config())
    codec = build_codec(data.codec_config())
    stream = SceneStream(data.dataset, sp.dp_rank, sp.dp_world, sched.seed, data.shuffle_buffer, data.holdout)
    loader = SceneLoader(stream, data, cfg.recipe, cfg.window_shots, sched.seed, text, codec, **position, cache=cache)
    negative = negative_features(lct_cfg, text)           # prompt dropout's text = generate's default uncond
    val_scene = validation_scene(data.dataset, data, cfg.window_shots, data.holdout)
    writer = MetricsWriter(run_dir) if rank == 0 else None
    peak = matmul_peak(device.type) if rank == 0 else None
    if rank == 0:
        log.info("training %s (%.2fM params) on %d %s workers, ZeRO-%d, sequence parallel %d, steps %d -> %d",
                 cfg.model.pretrained or cfg.model.preset, sum(p.numel() for p in model.parameters()) / 1e6, world, device.type,
                 eng.zero_stage, sp.degree, step, until)

    # 4. The loop.
    buckets: dict[str, list[float]] = {}
    while step < until:
        started, waited = time.perf_counter(), loader.wait_s
        tokens, flops, losses = 0, 0, []
        for micro in range(cfg.optim.grad_accum):
            scenes = [loader.next().scene for _ in range(cfg.optim.micro_batch)]
            if drop_prompts(sched.seed, step, micro, cfg.recipe.text_dropout):
                scenes = [null_scene(s, negative) for s in scenes]              # CFG's unconditional branch
            gen = step_generator(sched.seed, step, sp.dp_rank, micro)            # the same in an SP group
            shot_mask = torch.zeros(len(scenes), max(len(s.shots) for s in scenes), dtype=torch.bool)
            for b, s in enumerate(scenes):
                shot_mask[b, : len(s.shots)] = True
            t = sample_timesteps(shot_mask, cfg.recipe, gen)                       # (B, S)
            noisy, targets = add_noise([[sh.latent for sh in s.shots] for s in scenes], t, gen)
            batch = collate(
                [Scene(s.global_text, [Shot(sh.text, z) for sh, z in zip(s.shots, zs)]) for s, zs in zip(scenes, noisy)],
                lct_cfg,
            ).to(device)
            if sp.degree == 1:
                out = engine(batch, model_timesteps(t, device), packed=True)      # (B, Lv, patch_dim)
                velocities = unpack(out, batch, lct_cfg.patch)                    # v[b][i] (C, F, H, W)
                loss, per_shot = flow_loss(velocities, targets, batch.shot_mask)
                engine.backward(loss)
            else:                                                                 # this rank's L / P tokens
                local = shard_batch(batch, sp.rank, sp.degree, text=cfg.model.backbone != "wan")
                out = engine(local, model_timesteps(t, device), packed=True)      # (B, ceil(Lv / P), patch_dim)
                share, loss, per_shot = sharded_flow_loss(out, targets, batch, local, sp, lct_cfg.patch)
                engine.backward(share)
            engine.step()
            losses.append(loss.detach().float())
            for key, (total, count) in bucket_losses(per_shot, t, shot_mask).items():
                acc = buckets.setdefault(key, [0.0, 0])
                acc[0], acc[1] = acc[0] + total, acc[1] + count
            tokens += batch.txt.shape[1] * batch.txt.shape[0] + batch.vid.shape[1] * batch.vid.shape[0]
            flops += train_step_flops(lct_cfg, batch) / sp.degree if cfg.model.backbone != "wan" else 0
        step += 1
        if ema is not None:
            ema.update(engine.module)
        step_s = time.perf_counter() - started

        last = step == until
        if step % sched.log_every == 0 or last or step % sched.checkpoint_every == 0:
            mean_loss, skipped = reduce_over_ranks(torch.stack(losses).mean(), loader.skipped)
            metrics = {
                "loss": mean_loss,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "lr": float(engine.get_lr()[0]),
                "step_s": step_s,
                "samples_per_s": cfg.optim.micro_batch * cfg.optim.grad_accum * sp.dp_world / step_s,
                "tokens_per_s": tokens * sp.dp_world / step_s,
                "data_wait": (loader.wait_s - waited) / step_s,
                "peak_mem_mb": peak_memory_mb(device.type),
                "state_mb": rank_state_mb(engine),
                "mfu": flops / step_s / peak if peak and flops else None,   # no FLOP model of Wan yet
                "skipped_samples": skipped,
                "epoch": loader.position["epoch"],
            }
            metrics |= {f"loss_{k}": v[0] / v[1] for k, v in buckets.items() if v[1]}
            buckets = {}
            if writer:
                writer.write(step, metrics)
            if step % sched.checkpoint_every == 0 or last:
                positions = [None] * world
                dist.all_gather_object(positions, loader.position)
                state = {
                    "step": step, "world_size": world, "sequence_parallel": sp.degree, "seed": sched.seed,
                    "data": {str(r // sp.degree): p for r, p in enumerate(positions)},   # by DP rank
                    "config": cfg.model_dump(mode="json"),
                }
                save(engine, run_dir, step, state, ema, {**metrics, "step": step}, cfg, under_ray)
            elif under_ray and step % sched.report_every == 0:
                import ray.train

                ray.train.report({**metrics, "step": step})
        if sched.sample_every and step % sched.sample_every == 0 and not last:
            with single_device_attention(engine.module):             # every rank samples the whole scene
                written = write_samples(engine.module, val_scene, text, codec, run_dir / "samples" / f"step-{step:06d}",
                                        sched.sample_steps, data.fps, sched.seed, write=rank == 0)
            if writer:
                writer.images(written, step)

    # 5. Samples at the end and the export (weights + what inference needs).
    loader.close()
    with single_device_attention(engine.module):
        written = write_samples(engine.module, val_scene, text, codec, run_dir / "samples" / f"step-{step:06d}",
                                sched.sample_steps, data.fps, sched.seed, write=rank == 0)
    path = export(engine, cfg, run_dir, step, ema)
    if rank == 0:
        log.info("exported step %d to %s", step, path)
        writer.images(written, step)
        last_row = (read_metrics(run_dir) or [{}])[-1]
        writer.hparams(cfg.model_dump(mode="json"), {k: last_row.get(k) for k in ("loss", "samples_per_s", "mfu")})
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="One LCT training worker under torchrun / deepspeed (see module doc).")
    parser.add_argument("run", type=Path, help="Run dir holding config.yaml (from `lct train --dry-run`).")
    parser.add_argument("--until", type=int, default=None, help="Stop (with a checkpoint) at this step.")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # deepspeed launcher
    args = parser.parse_args()
    cfg = TrainConfig.from_yaml(args.run / "config.yaml")
    train_worker({"config": cfg.model_dump(mode="json"), "run_dir": str(args.run.resolve()), "until": args.until})


if __name__ == "__main__":
    main()
