"""Step metrics reduced over ranks: 2 real gloo processes (torch.multiprocessing), no mocks."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    from training.train import reduce_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 1 skipped one corrupt sample, rank 0 none; losses 1.0 and 3.0
        loss, skipped = reduce_over_ranks(torch.tensor(1.0 + 2 * rank), skipped=rank)
        results[rank] = (loss, skipped)
    finally:
        dist.destroy_process_group()


def test_skipped_samples_and_loss_are_reduced_over_two_gloo_ranks():
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: (2.0, 1), 1: (2.0, 1)}      # the sample skipped on rank 1 counts on rank 0
