"""Two Ray nodes (ray.cluster_utils.Cluster, 1 CPU each, on this machine): `curate` spreads its film
tasks over both, `launch` puts one training worker on each (DeepSpeed ZeRO over gloo between them),
and a node lost mid-run costs a restart from the last checkpoint, not the run.

The session's in-process local Ray (tests/conftest.py `curated`) is shut down for this module and
started again afterwards with the same arguments, so the tests after it find Ray as they left it.
"""

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from dataprep.config import CurateConfig
from dataprep.run import curate
from dataprep.synthetic import SynthConfig, make_films
from tests.conftest import FAST_CURATION
from training.config import TrainConfig
from training.launch import launch, read_placement
from training.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node of 1 CPU each, this process their driver; the local Ray restored after."""
    was_local, address = ray.is_initialized(), os.environ.get("RAY_ADDRESS")
    if was_local:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        os.environ["RAY_ADDRESS"] = cluster.address   # Ray Train's helper processes join this cluster, no other
        yield cluster
    finally:
        os.environ.pop("RAY_ADDRESS", None) if address is None else os.environ.update(RAY_ADDRESS=address)
        ray.shutdown()
        cluster.shutdown()
        if was_local:   # as tests/conftest.py `curated` started it
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")


def node_ids(cluster: Cluster) -> set[str]:
    return {cluster.head_node.node_id} | {n.node_id for n in cluster.worker_nodes}


@pytest.fixture(scope="module")
def dataset(two_nodes, tmp_path_factory) -> Path:
    """4 synthetic films curated on the two nodes (the session fixture `curated`'s settings)."""
    films = tmp_path_factory.mktemp("mn-films")
    make_films(SynthConfig(n_films=4, seed=11), films)
    cfg = CurateConfig.model_validate({**FAST_CURATION, "clips": {**FAST_CURATION["clips"], "fps": 8.0}})
    out = tmp_path_factory.mktemp("mn-curated") / "dataset"
    summary = curate([str(films)], out, cfg)
    assert summary.counts.get("ok") == 4, summary
    return out


def config(dataset: Path, **engine) -> TrainConfig:
    return TrainConfig.model_validate({
        "data": {"dataset": str(dataset), "frames": 4, "size": [16, 16], "holdout": 1},
        "model": {"preset": "lct-debug"},
        "engine": {"workers": 2, "zero_stage": 2, **engine},
        "schedule": {"steps": 6, "checkpoint_every": 2, "sample_steps": 2, "keep_checkpoints": 3},
    })


def test_curate_spreads_film_tasks_over_both_nodes(two_nodes, dataset):
    film_nodes = json.loads((dataset / "dataset.json").read_text())["film_nodes"]
    assert len(film_nodes) == 4
    assert set(film_nodes.values()) == node_ids(two_nodes), film_nodes


@pytest.fixture(scope="module")
def straight(two_nodes, dataset, tmp_path_factory) -> Path:
    """6 uninterrupted steps, one worker per node."""
    run = tmp_path_factory.mktemp("mn-straight") / "run"
    result = launch(config(dataset), run)
    assert result.step == 6 and math.isfinite(result.loss)
    return run


def test_two_workers_train_one_on_each_node(two_nodes, straight):
    placement = read_placement(straight)
    assert sorted(p["rank"] for p in placement) == [0, 1] and {p["world_size"] for p in placement} == {2}
    assert {p["node_id"] for p in placement} == node_ids(two_nodes), placement
    state = json.loads((straight / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["world_size"] == 2


def when_checkpointed(run: Path, then) -> threading.Thread:
    """A thread that calls `then()` once Ray has registered the step-2 checkpoint and step 3 is logged;
    its exception, if any, is kept in thread.errors."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
            if snapshot.is_file() and "step-000002" in snapshot.read_text() and any(m["step"] >= 3 for m in read_metrics(run)):
                try:
                    then()
                except Exception as err:   # noqa: BLE001 - reported by the test
                    thread.errors.append(err)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.errors = []
    thread.start()
    return thread


def restart(run: Path) -> tuple[int, list[dict]]:
    """(the step resumed from, the metrics lines logged after the restart)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines]
    i = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    return steps[i] - 1, lines[i:]


def test_a_lost_node_restarts_the_group_from_the_last_checkpoint(two_nodes, dataset, straight, tmp_path):
    """A spare node joins first (what KubeRay does for a lost pod, ahead of time here: Cluster.add_node
    cannot run outside the main thread); a node running a worker dies after the step-2 checkpoint,
    and the group restarts on the two live nodes from the last checkpoint. The steps after the
    restart have the losses of the uninterrupted run."""
    two_nodes.add_node(num_cpus=1)
    two_nodes.wait_for_nodes()
    run = tmp_path / "run"
    lost = []

    def remove_a_worker_node():
        used = {p["node_id"] for p in read_placement(run)}
        victim = next(n for n in two_nodes.worker_nodes if n.node_id in used)
        two_nodes.remove_node(victim, allow_graceful=False)
        lost.append(victim.node_id)

    thread = when_checkpointed(run, remove_a_worker_node)
    result = launch(config(dataset), run)
    thread.join(timeout=5)
    assert not thread.errors and lost, (thread.errors, "the run finished before a node could be removed")
    assert result.step == 6 and math.isfinite(result.loss)

    resumed_from, after = restart(run)
    assert resumed_from in (2, 4), resumed_from                # a checkpoint, not step 0
    assert [m["step"] for m in after] == list(range(resumed_from + 1, 7))
    reference = {m["step"]: m["loss"] for m in read_metrics(straight)}
    for m in after:
        assert abs(m["loss"] - reference[m["step"]]) < 1e-5, (m["step"], m["loss"], reference[m["step"]])

    placement = read_placement(run)
    assert len(placement) == 4, placement                      # 2 workers, started twice
    first, second = placement[:2], placement[2:]
    assert lost[0] in {p["node_id"] for p in first} and lost[0] not in {p["node_id"] for p in second}
    assert len({p["node_id"] for p in second}) == 2 and {p["world_size"] for p in second} == {2}
