"""Gloo process groups in spawned test processes (torch.multiprocessing, "spawn").

A worker that finished its work and its collectives can still die at exit: one CI run lost rank 1
of the Wan SP test to SIGABRT ("terminate called without an active exception") after every
assertion-relevant step, a teardown race between gloo's C++ threads and interpreter
finalisation (pytorch/pytorch#179291 describes the same crash). `spawn` therefore ends each
worker with a barrier (no rank tears its pairs down while a peer still talks), then
destroy_process_group, then os._exit(0) once the work returned: the results are already on disk
or in the Manager. An exception inside the work still fails the test with its traceback.
"""

import os
import sys

import torch.distributed as dist
import torch.multiprocessing as mp

from tests._ray import free_port   # noqa: F401  (re-exported: the gloo tests' rendezvous port)


def spawn(work, args: tuple, nprocs: int = 2) -> None:
    """work(rank, *args) in nprocs fresh processes; work opens the process group, spawn closes it."""
    mp.start_processes(_entry, args=(work, args), nprocs=nprocs, join=True, start_method="spawn")


def _entry(rank: int, work, args: tuple) -> None:
    work(rank, *args)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
