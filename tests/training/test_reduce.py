"""Step metrics reduced over ranks: 2 real gloo processes (torch.multiprocessing, torchrun), no mocks."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests._gloo import free_port, spawn


def _rank(rank: int, port: int, results) -> None:
    from training.train import reduce_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # rank 1 skipped one corrupt sample, rank 0 none; losses 1.0 and 3.0
    loss, skipped = reduce_over_ranks(torch.tensor(1.0 + 2 * rank), skipped=rank)
    results[rank] = (loss, skipped)


def test_skipped_samples_and_loss_are_reduced_over_two_gloo_ranks():
    results = mp.Manager().dict()
    spawn(_rank, (free_port(), results))
    assert dict(results) == {0: (2.0, 1), 1: (2.0, 1)}      # the sample skipped on rank 1 counts on rank 0


# -- the training loop: `skipped_samples` in metrics.jsonl is the sum over ranks -----------------
def _one_shard_with_a_corrupt_second_sample(curated, root):
    """Every scene of `curated` in one shard, the second with garbage mp4s. With fewer shards than ranks
    each rank reads every other sample (training.data.SceneStream), so only rank 1 ever meets it, and
    with shuffle_buffer 1 as its first sample."""
    import io
    import shutil
    import tarfile

    shutil.copytree(curated / "manifest", root / "manifest")
    (root / "shards").mkdir(parents=True)
    keys = []
    with tarfile.open(root / "shards" / "scenes-000000.tar", "w") as out:
        for src in sorted((curated / "shards").glob("*.tar")):
            with tarfile.open(src) as tar:
                for m in tar.getmembers():
                    key = m.name.split(".")[0]
                    if key not in keys:
                        keys.append(key)
                    data = tar.extractfile(m).read()
                    if keys.index(key) == 1 and m.name.endswith(".mp4"):
                        data = b"\x00garbage" * 100
                    m.size = len(data)
                    out.addfile(m, io.BytesIO(data))
    assert len(keys) >= 4, keys
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)          # includes building the session `curated` fixture when run alone
def test_a_sample_skipped_on_rank_1_is_counted_in_the_metrics(curated, tmp_path):
    from tests.training.test_sequence_parallel import torchrun
    from training.config import TrainConfig
    from training.metrics import read_metrics

    dataset = _one_shard_with_a_corrupt_second_sample(curated, tmp_path / "ds")
    cfg = TrainConfig.model_validate({
        "data": {"dataset": str(dataset), "frames": 2, "size": [16, 16], "holdout": 0, "shuffle_buffer": 1},
        "model": {"preset": "lct-debug"},
        "engine": {"workers": 2, "zero_stage": 1},
        "schedule": {"steps": 2, "log_every": 1, "checkpoint_every": 2, "sample_steps": 1},
    })
    run = tmp_path / "run"
    run.mkdir()
    torchrun(run, 2, cfg)                                    # 2 gloo ranks, rank 0 writes the metrics
    skipped = [m["skipped_samples"] for m in read_metrics(run)]
    assert len(skipped) == 2 and skipped[-1] >= 1, skipped   # rank 0 alone would say 0


# -- DeepSpeed on CPU starts without JIT-building its shared-memory all-reduce ---------------------
def _ds_rank(rank: int, port: int, extensions: str, results) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=extensions)
    import deepspeed
    import deepspeed.comm as ds_dist

    from training.train import skip_shm_comm_build

    skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo")
    x = torch.tensor([1.0 + rank])
    ds_dist.inference_all_reduce(x, op=dist.ReduceOp.SUM)          # what the op would serve: gloo instead
    y = torch.tensor([10.0 * (rank + 1)])
    ds_dist.all_reduce(y)
    results[rank] = (float(x), float(y))


def test_deepspeed_on_cpu_reduces_without_building_the_shm_op(tmp_path):
    """init_distributed on the CPU accelerator used to compile deepspeed_shm_comm (about a minute on a
    fresh machine, before the demo's first step); the reductions still sum over the 2 ranks."""
    results = mp.Manager().dict()
    spawn(_ds_rank, (free_port(), str(tmp_path / "ext"), results))
    assert dict(results) == {0: (3.0, 30.0), 1: (3.0, 30.0)}
    built = [p.name for p in (tmp_path / "ext").rglob("*") if "shm" in p.name]
    assert built == [], built
