"""training.launch.connect refuses GPU workers a local Ray cannot host (Ray Train would wait forever)."""

import pytest


def test_gpu_workers_on_a_local_ray_without_gpus_are_refused(monkeypatch):
    import ray

    from training.launch import TrainUsageError, connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        if ray.cluster_resources().get("GPU", 0):
            pytest.skip("this machine's Ray has GPUs")
        with pytest.raises(TrainUsageError, match=r"need 2 GPUs; the local Ray sees 0.*--gpus-per-worker 0"):
            connect(None, 2, 1, gpus=1)
        connect(None, 2, 1, gpus=0)  # the CPU path is fine
    finally:
        if started:
            ray.shutdown()
